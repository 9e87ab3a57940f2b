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

from converter import __version__, backends
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

    p = sub.add_parser("convert", help="the whole pipeline: export, onnx, openvino, parity, manifest")
    _add_common(p)
    _add_weights(p)
    p.add_argument("--input-shape", type=_shape, help="static input shape N,C,H,W (default: the config's)")
    p.add_argument("--images", nargs="+", metavar="FILE_OR_DIR",
                   help="images for the parity gate (default: the bundled samples)")
    p.add_argument("--threads", type=int, default=2, help="threads per parity backend (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="redo every stage even when up to date")

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
                   help="output the logits [N,classes,H,W] instead of class indices")
    p.add_argument("--logits-output", metavar="DIR",
                   help="also write the --without-argmax variant there, from the same weights load")
    p.add_argument("--force", action="store_true", help="redo even when the outputs are up to date")
    p = sub.add_parser("onnx", help="convert the Paddle export to ONNX (BGR 0..255 input)")
    _add_common(p)
    p.add_argument("--input-shape", type=_shape, help="static input shape N,C,H,W (default: the config's)")
    p.add_argument("--force", action="store_true", help="redo even when the output is up to date")

    p = sub.add_parser("openvino", help="convert to OpenVINO IR, FP32 and FP16 (BGR 0..255 input)")
    _add_common(p)
    p.add_argument("--input-shape", type=_shape, help="static input shape N,C,H,W (default: the config's)")
    p.add_argument("--from", dest="source", choices=["paddle", "onnx"], default="paddle",
                   help="convert the Paddle model (default) or the ONNX file")
    p.add_argument("--force", action="store_true", help="redo even when the outputs are up to date")
    p = sub.add_parser("parity", help="compare original, ONNX and IR outputs; exit 10 when the gate fails")
    _add_common(p)
    p.add_argument("--images", nargs="+", metavar="FILE_OR_DIR",
                   help="images to compare on (default: the bundled samples)")
    p.add_argument("--threads", type=int, default=2, help="threads per backend (default: %(default)s)")
    p.add_argument("--backends", nargs="+", metavar="NAME", choices=backends.NAMES,
                   help="converted backends to compare (default: all; the reference always runs)")
    p = sub.add_parser("predict", help="segment images; write class, colour and overlay PNGs")
    _add_common(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--backend", choices=backends.NAMES, default=backends.DEFAULT,
                   help="a backend of the registry (default: %(default)s)")
    p.add_argument("--output", default="predictions", help="output folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default: %(default)s)")

    p = sub.add_parser("evaluate", help="Cityscapes mIoU against the reference per-class IoU")
    _add_common(p)
    p.add_argument("--cityscapes", required=True, metavar="ROOT", help="dataset root (leftImg8bit/, gtFine/)")
    p.add_argument("--split", default="val", help="default: %(default)s")
    p.add_argument("--backend", choices=backends.NAMES, default=backends.DEFAULT,
                   help="a backend of the registry (default: %(default)s)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--jobs", type=int, default=2, help="image-decoding threads (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default: %(default)s)")
    p.add_argument("--output", required=True, metavar="DIR", help="where metrics.json and metrics.md go")
    p = sub.add_parser("bench", help="latency, peak RSS and roofline fraction of each backend")
    _add_common(p)
    p.add_argument("--input-shape", type=_shape, help="must match the artifacts (default: theirs)")
    p.add_argument("--runs", type=int, default=5, help="steady runs per backend (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads per backend (default: %(default)s)")
    p.add_argument("--backends", nargs="+", metavar="NAME", choices=backends.NAMES,
                   help=f"subset to run (default: all of {', '.join(backends.NAMES)})")

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


def _print_result(result, detail=""):
    """A stage's paths on stdout; its outcome on stderr."""
    for path in result.paths:
        print(path)
    outcome = "skipped, up to date" if result.skipped else f"done in {result.seconds} s"
    print(f"{result.stage}: {outcome}{detail}", file=sys.stderr)


def _print_parity_verdict(record):
    worst = min((m["agreement"], name) for name, e in record["results"].items() if e["gated"]
                for m in e["images"].values())
    print(f"PASSED: f32 backends agree with the reference on >= {worst[0]:.6%} of pixels "
          f"(lowest: {worst[1]}); every flip a near-tie")


def _print_manifest(result):
    files = result.record["files"]
    print(f"manifest: {len(files)} files ({sum(f['model_file'] for f in files)} model files) -> "
          f"{result.paths[0]}; card -> {result.paths[1]}")


def _cmd_manifest(args, config):
    from converter.stages import manifest

    result = manifest.run(config, args.workdir)
    _print_manifest(result)
    # Repeat the parity verdict, so that a build's last line says whether parity passed.
    parity = result.record["stages"].get("parity")
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
    from converter.stages import parity

    try:
        result = parity.run(config, args.workdir, args.images, args.threads, args.backends)
    except ParityFailure as exc:
        print(f"FAILED: {exc}")
        return exc.exit_code
    print(f"report: {result.paths[1]}")
    _print_parity_verdict(result.record)
    return 0


def _cmd_onnx(args, config):
    from converter.stages import onnx

    _print_result(onnx.run(config, args.workdir, args.input_shape, args.force))
    return 0


def _cmd_openvino(args, config):
    from converter.stages import openvino

    _print_result(openvino.run(config, args.workdir, args.input_shape, args.source, args.force))
    return 0


def _cmd_fetch(args, config):
    from converter.stages import fetch

    mode = "json" if args.json else "quiet" if args.quiet or not sys.stderr.isatty() else "bar"
    if args.mirror:
        fetch.check_url(args.mirror)
    result = fetch.run(config, None, args.output, args.cache_dir, args.mirror, args.from_dir, mode,
                       roles=args.only, timeouts=(args.connect_timeout, args.read_timeout), retries=args.retries)
    if args.json:
        print(json.dumps({"event": "summary", **result.record}, sort_keys=True))
    elif not args.quiet:
        for rec, path in zip(result.record["files"], result.paths):
            print(f"{path}  ({rec['source']}, verified sha384)")
    return 0


def _weights(args, config):
    from converter.weights.choice import resolve_weights

    return resolve_weights(config, args.weights, args.seed, args.cache_dir, args.mirror, args.allow_unverified)


def _weights_detail(record):
    kind = record.weights["kind"]
    return f", weights: {kind}" + (f" (seed {record.weights['seed']})" if kind == "synthetic" else "")


def _cmd_export(args, config):
    from converter.stages import export

    result = export.run(config, args.workdir, _weights(args, config), args.without_argmax, args.logits_output,
                        args.force, output=args.output)
    _print_result(result, _weights_detail(result.record))
    return 0


def _cmd_convert(args, config):
    from converter.pipeline import convert

    def report(result):
        if result.stage == "manifest":
            _print_manifest(result)
        elif result.stage != "parity":
            _print_result(result, _weights_detail(result.record) if result.stage == "export" else "")
    try:
        results = convert(config, args.workdir, _weights(args, config), args.input_shape, args.images,
                          args.threads, args.force, report)
    except ParityFailure as exc:
        print(f"FAILED: {exc}")
        return exc.exit_code
    _print_parity_verdict(next(r for r in results if r.stage == "parity").record)
    return 0


COMMANDS = {"convert": _cmd_convert, "fetch": _cmd_fetch, "export": _cmd_export, "onnx": _cmd_onnx, "openvino": _cmd_openvino,
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
