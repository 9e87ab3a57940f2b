"""Command line: a thin layer over the stage functions.

Heavy libraries (paddle, onnx, openvino) are imported inside the commands, so
`--help` and `fetch` start fast.
"""
import argparse
import errno
import json
import os
import signal
import sys

from converter import __version__
from converter.errors import ConverterError, DiskFullError, ParityFailure

DEFAULT_WORKDIR = "artifacts"


def _shape(text):
    try:
        dims = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W integers, got '{text}'") from None
    if len(dims) != 4 or dims[0] != 1 or dims[1] != 3 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"expected 1,3,H,W with positive H and W, got '{text}'")
    if dims[2] % 32 or dims[3] % 32:
        raise argparse.ArgumentTypeError(f"H and W must be multiples of 32, got '{text}'")
    return tuple(dims)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be positive and finite, got '{text}'")
        return value
    return parse


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got '{text}'")
    return value


def _output_folder(path):
    """--output must be a folder or not exist yet (never an existing file)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ConverterError(f"--output {path} exists and is not a folder")
    return path


def _add_common(p, workdir=True):
    p.add_argument("--config", help="model config YAML (default: configs/ocrnet-hrnet-w48-paddle.yaml)")
    if workdir:
        p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="artifact folder (default: %(default)s)")


def _add_weights(p):
    p.add_argument("--weights", default="auto",
                   help="auto (default), pretrained, synthetic, or a .pdparams path")
    p.add_argument("--seed", type=int, default=0, help="seed for synthetic weights (default: 0)")
    p.add_argument("--allow-unverified", action="store_true",
                   help="load a --weights PATH whose sha384 differs from the config's")
    p.add_argument("--cache-dir", help="download cache (default: see README)")
    p.add_argument("--mirror", help="base URL to fetch the checkpoint from")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ocrnet-convert",
        description="Convert PaddleSeg release-2.3 OCRNet-HRNet_W48 to ONNX and OpenVINO IR, and prove parity.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("fetch", help="download the checkpoint and configs, verified and cached")
    _add_common(p, workdir=False)
    p.add_argument("--output", default=os.path.join(DEFAULT_WORKDIR, "download"),
                   help="where to place the files (default: %(default)s)")
    p.add_argument("--cache-dir", help="content-addressed cache (default: see README)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mirror", help="fetch every file as URL/<file name>")
    src.add_argument("--from", dest="from_dir", metavar="DIR", help="take the files from a local folder")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="no progress output")
    out.add_argument("--json", action="store_true", help="progress events as JSON lines on stdout")
    p.add_argument("--only", choices=["checkpoint", "training-config"], action="append",
                   help="fetch only files with this role (repeatable)")
    p.add_argument("--connect-timeout", type=_positive(float), default=10.0, help="seconds (default: %(default)s)")
    p.add_argument("--read-timeout", type=_positive(float), default=30.0, help="seconds (default: %(default)s)")
    p.add_argument("--retries", type=_non_negative_int, default=4, help="retries per file (default: %(default)s)")

    p = sub.add_parser("export", help="write the Paddle inference model (release-2.3 format)")
    _add_common(p)
    _add_weights(p)
    p.add_argument("--output", help="output folder (default: WORKDIR/paddle)")
    p.add_argument("--without-argmax", action="store_true",
                   help="output the logits [N,19,H,W] instead of class indices")
    p.add_argument("--logits-output", metavar="DIR",
                   help="also write the --without-argmax variant there, from the same weights load")
    p.add_argument("--force", action="store_true", help="redo even when the outputs are up to date")
    p = sub.add_parser("onnx", help="convert the Paddle export to ONNX (BGR 0..255 input)")
    _add_common(p)
    p.add_argument("--input-shape", type=_shape, default=(1, 3, 1024, 2048),
                   help="static input shape N,C,H,W (default: 1,3,1024,2048)")
    p.add_argument("--force", action="store_true", help="redo even when the output is up to date")

    p = sub.add_parser("openvino", help="convert to OpenVINO IR, FP32 and FP16 (BGR 0..255 input)")
    _add_common(p)
    p.add_argument("--input-shape", type=_shape, default=(1, 3, 1024, 2048),
                   help="static input shape N,C,H,W (default: 1,3,1024,2048)")
    p.add_argument("--from", dest="source", choices=["paddle", "onnx"], default="paddle",
                   help="convert the Paddle model (default) or the ONNX file")
    p.add_argument("--force", action="store_true", help="redo even when the outputs are up to date")
    p = sub.add_parser("parity", help="compare original, ONNX and IR outputs; exit 10 when the gate fails")
    _add_common(p)
    p.add_argument("--images", nargs="+", metavar="FILE_OR_DIR",
                   help="images to compare on (default: the bundled samples)")
    p.add_argument("--threads", type=int, default=2, help="threads per backend (default: %(default)s)")
    p = sub.add_parser("predict", help="segment images; write class, colour and overlay PNGs")
    _add_common(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--backend", choices=["paddle", "onnx", "openvino"], default="openvino",
                   help="default: %(default)s (FP32 IR at f32)")
    p.add_argument("--output", default="predictions", help="output folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default: %(default)s)")

    p = sub.add_parser("evaluate", help="Cityscapes mIoU against the reference per-class IoU")
    _add_common(p)
    p.add_argument("--cityscapes", required=True, metavar="ROOT", help="dataset root (leftImg8bit/, gtFine/)")
    p.add_argument("--split", default="val", help="default: %(default)s")
    p.add_argument("--backend", choices=["paddle", "onnx", "openvino"], default="openvino",
                   help="default: %(default)s")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--jobs", type=int, default=2, help="image-decoding threads (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default: %(default)s)")
    p.add_argument("--output", required=True, metavar="DIR", help="where metrics.json and metrics.md go")
    p = sub.add_parser("bench", help="latency, peak RSS and roofline fraction of each backend")
    _add_common(p)
    p.add_argument("--input-shape", type=_shape, help="must match the artifacts (default: theirs)")
    p.add_argument("--runs", type=int, default=5, help="steady runs per backend (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads per backend (default: %(default)s)")
    p.add_argument("--backends", nargs="+", metavar="NAME",
                   help="subset to run (default: all; names as in bench.md and the README)")

    p = sub.add_parser("manifest", help="write MANIFEST.json and the model card README.md (last step)")
    _add_common(p)
    return parser


def _check_threads(args):
    if getattr(args, "threads", 1) < 1:
        raise ConverterError("--threads must be at least 1")


def _cmd_bench(args, config):
    from converter.commands.bench import markdown, run_bench

    if args.runs < 1:
        raise ConverterError("--runs must be at least 1")
    paths, record = run_bench(config, args.workdir, args.input_shape, args.runs, args.threads, args.backends)
    print(markdown(record))
    print(f"bench: {paths[0]}")
    return 0


def _cmd_manifest(args, config):
    from converter.stages.manifest import run_manifest

    paths, manifest = run_manifest(config, args.workdir)
    n_model = sum(f["model_file"] for f in manifest["files"])
    print(f"manifest: {len(manifest['files'])} files ({n_model} model files) -> {paths[0]}; card -> {paths[1]}")
    # The manifest is the last step of `make convert`; repeat the parity
    # verdict so that the build's last line says whether parity passed.
    parity = manifest["stages"].get("parity")
    if parity is not None:
        print("PASSED: parity gate passed (see parity/report.md)" if parity["passed"]
              else "FAILED: parity gate failed (see parity/report.md)")
    return 0


def _cmd_predict(args, config):
    from converter.commands.predict import run_predict

    paths, _ = run_predict(config, args.workdir, args.images, args.backend, args.output, args.threads)
    print(f"predict: wrote {len(paths)} files to {args.output}", file=sys.stderr)
    return 0


def _cmd_evaluate(args, config):
    from converter.commands.evaluate import run_evaluate

    if args.limit is not None and args.limit <= 0:
        raise ConverterError("--limit must be positive")
    if args.jobs < 1:
        raise ConverterError("--jobs must be at least 1")
    paths, result = run_evaluate(config, args.workdir, args.cityscapes, args.split, args.backend,
                                 args.output, args.limit, args.jobs, args.threads)
    print(f"mIoU {result['miou']:.4f} (reference {config.reference['miou']:.4f}), pixel accuracy "
          f"{result['pixel_accuracy']:.4f} over {result['images']} images; {paths[0]}")
    return 0


def _cmd_parity(args, config):
    from converter.stages.parity import run_parity

    try:
        paths, record = run_parity(config, args.workdir, args.images, args.threads)
    except ParityFailure as exc:
        print(f"FAILED: {exc}")
        return exc.exit_code
    print(f"report: {paths[1]}")
    worst = min((m["agreement"], name) for name, e in record["results"].items() if e["gated"]
                for m in e["images"].values())
    print(f"PASSED: f32 backends agree with the original on >= {worst[0]:.6%} of pixels "
          f"(lowest: {worst[1]}); every flip a near-tie")
    return 0


def _report_stage(stage, paths, record, detail=""):
    """A conversion stage's output paths on stdout; its outcome on stderr."""
    for path in paths:
        print(path)
    outcome = "skipped, up to date" if record.get("skipped") else f"done in {record['seconds']} s"
    print(f"{stage}: {outcome}{detail}", file=sys.stderr)


def _cmd_onnx(args, config):
    from converter.stages.onnx import run_onnx

    paths, record = run_onnx(config, args.workdir, args.input_shape, args.force)
    _report_stage("onnx", paths, record)
    return 0


def _cmd_openvino(args, config):
    from converter.stages.openvino import run_openvino

    paths, record = run_openvino(config, args.workdir, args.input_shape, args.source, args.force)
    _report_stage("openvino", paths, record)
    return 0


def _cmd_fetch(args, config):
    from converter.stages import fetch
    from converter.stages.fetch import default_cache_dir, run_fetch

    mode = "json" if args.json else "quiet" if args.quiet or not sys.stderr.isatty() else "bar"
    if args.mirror:
        fetch.check_url(args.mirror)
    paths, record = run_fetch(config, args.output, args.cache_dir or default_cache_dir(),
                              args.mirror, args.from_dir, mode, roles=args.only,
                              timeouts=(args.connect_timeout, args.read_timeout), retries=args.retries)
    if args.json:
        print(json.dumps({"event": "summary", **record}, sort_keys=True))
    elif not args.quiet:
        for rec, path in zip(record["files"], paths):
            print(f"{path}  ({rec['source']}, verified sha384)")
    return 0


def _cmd_export(args, config):
    from converter.stages.export import run_export
    from converter.weights.choice import resolve_weights

    choice = resolve_weights(config, args.weights, args.seed, args.cache_dir, args.mirror,
                             args.allow_unverified)
    paths, record = run_export(config, _output_folder(os.path.join(args.workdir, "paddle")) if not args.output else args.output,
                               choice, args.without_argmax, args.logits_output, args.force)
    kind = record["weights"]["kind"]
    _report_stage("export", paths, record,
                  f", weights: {kind}" + (f" (seed {record['weights']['seed']})" if kind == "synthetic" else ""))
    return 0


COMMANDS = {"fetch": _cmd_fetch, "export": _cmd_export, "onnx": _cmd_onnx, "openvino": _cmd_openvino,
            "parity": _cmd_parity, "predict": _cmd_predict, "evaluate": _cmd_evaluate,
            "manifest": _cmd_manifest, "bench": _cmd_bench}
# The folder each command locks, and how: writers exclusively, readers shared.
READERS = ("predict", "evaluate")


def _lock_folder(args):
    if args.command == "fetch":
        return args.output
    if args.command == "export" and args.output:
        return os.path.dirname(os.path.abspath(args.output))
    return args.workdir


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: workers stopped, temporary files removed."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None):
    # Paddle and numpy spawn one OpenMP thread per core by default, which
    # oversubscribes small machines; keep it explicit and overridable.
    os.environ.setdefault("OMP_NUM_THREADS", str(min(os.cpu_count() or 2, 8)))
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        from converter.config import load_config
        from converter.util.fsutil import workdir_lock
        from converter.util.log import info

        config = load_config(args.config)
        _check_threads(args)
        if getattr(args, "output", None):
            _output_folder(args.output)  # before the lock, which creates its folder
        with workdir_lock(_lock_folder(args), shared=args.command in READERS, log=info):
            return COMMANDS[args.command](args, config)
    except ConverterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A user-caused I/O failure outside the stages' own checks: a full
        # disk, a read-only or unwritable folder, a path that is a file.
        what = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        print(f"error: {what}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return DiskFullError.exit_code
    finally:
        signal.signal(signal.SIGTERM, previous)
