"""Command line: a thin layer over the stage functions.

Heavy libraries (paddle, onnx, openvino) are imported inside the commands, so
`--help` and `fetch` start fast.
"""
import contextlib
import errno
import json
import os
import signal
import sys

from converter.cli_parser import _output_folder, build_parser
from converter.errors import ConverterError, DiskFullError, GateFailure, GuardMissed
from converter.util.text import shown


MAX_RAY_THREADS = 1024


def _check_counts(args):
    """--threads and --workers within what exists: a local run has the
    machine's cores (OpenMP aborts the process for absurd thread counts, and
    each worker holds a model); a Ray cluster is checked when joined."""
    cores = os.cpu_count() or 1
    ray = getattr(args, "executor", "local") == "ray"
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ConverterError("--threads must be at least 1")
    if threads is not None and threads > (MAX_RAY_THREADS if ray else cores):
        raise ConverterError(f"--threads {threads}: more than the {cores} cores of this machine")
    workers = getattr(args, "workers", None)
    if workers is not None and not ray and workers * (threads or 1) > cores:
        raise ConverterError(f"--workers {workers}" + (f" x --threads {threads}" if threads else "")
                             + f": more than the {cores} cores of this machine (each worker holds a model "
                             "and its threads)")
    if getattr(args, "jobs", None) is not None:
        raise ConverterError("--jobs is retired: use --workers N")


def _cmd_bench(args, config):
    from converter.commands.bench import markdown, run_bench

    if args.runs < 1:
        raise ConverterError("--runs must be at least 1")
    result = run_bench(config, args.workdir, shape=args.input_shape, runs=args.runs, threads=args.threads,
                       backends=args.backends, engine=args.engine, engine_images=args.engine_images)
    print(markdown(result.record))
    print(f"bench: {shown(result.paths[0])}")
    guards = (result.record.get("engine") or {}).get("guards", {})
    missed = [name for name, g in guards.items() if not g["met"]]
    if missed:
        raise GuardMissed(f"the engine missed its guard(s): {', '.join(missed)} (see {shown(result.paths[1])})")
    return 0


def _print_result(result, detail=""):
    """A stage's paths on stdout; its outcome on stderr."""
    for path in result.paths:
        print(shown(path))
    outcome = "skipped, up to date" if result.skipped else f"done in {result.seconds} s"
    print(f"{result.stage}: {outcome}{detail}", file=sys.stderr)


def _print_parity_verdict(record):
    gated = [name for name, e in record["results"].items() if e["gated"]]
    f32 = [(m["agreement"], name) for name, e in record["results"].items()
           if e["gated"] and (e.get("budget") or "f32") == "f32" for m in e["images"].values()]
    worst = min(f32, default=(1.0, "none"))
    print(f"PASSED: {len(gated)} gated backend(s) ({', '.join(gated)}): f32 agree on >= {worst[0]:.6%} of pixels "
          f"(lowest: {worst[1]}), every flip a near-tie; reduced precisions within their logit budgets")


def _print_manifest(result):
    files = result.record["files"]
    print(shown(f"manifest: {len(files)} files ({sum(f['model_file'] for f in files)} model files) -> "
                f"{result.paths[0]}; card -> {result.paths[1]}"))


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

    result = run_predict(config, args.workdir, images=args.images, backend=args.backend, output_dir=args.output,
                         threads=args.threads)
    print(f"predict: wrote {len(result.paths)} files to {shown(args.output)}", file=sys.stderr)
    return 0


def _cmd_evaluate(args, config):
    from converter.commands.evaluate import run_evaluate

    from converter.commands.evaluate import number_text

    result = run_evaluate(config, args.workdir, root=args.cityscapes, split=args.split, backend=args.backend,
                          output=args.output, limit=args.limit, workers=args.workers, threads=args.threads)
    metrics = result.record
    ref = (f" (published {config.published_accuracy['miou']:.4f})" if config.published_accuracy else "")
    print(shown(f"mIoU {number_text(metrics['miou'])}{ref}, pixel accuracy {number_text(metrics['pixel_accuracy'])} "
                f"over {metrics['images']} images; {result.paths[0]}"))
    return 0


def _cmd_quantize(args, config):
    from converter.stages import quantize

    options = quantize.options_from(
        config, subset_size=args.subset_size, calibration_tile=args.calibration_tile,
        **{key: getattr(args, key) for key in quantize.CHOICES})
    result = quantize.run(config, args.workdir, images=args.images, options=options,
                          cityscapes=args.cityscapes, split=args.split, max_drop=args.max_drop,
                          max_iterations=args.max_iterations, force=args.force)
    rec = result.record
    _print_result(result, f", {rec.params['fake_quantize_nodes']} FakeQuantize nodes, "
                          f"peak RSS {rec.params['peak_rss_mb']} MB")
    return 0


def _cmd_package(args, config):
    from converter.commands.package import run_package
    from converter.commands.verify import trusted_sha256, verify

    if args.sha256 and not args.verify:
        raise ConverterError("--sha256 goes with --verify ARCHIVE")
    if args.verify:
        print(shown(verify(args.verify, trusted_sha256(args.sha256) if args.sha256 else None)))
        return 0
    package = run_package(config, args.workdir, dist=args.output, allow_unverified=args.allow_unverified).record
    print(shown(package["archive"]))
    print(f"package: {', '.join(package['precisions'])} in {args.output}/ovms and {args.output}/omz; "
          f"archive sha256 {package['sha256']}" + (" (UNVERIFIED)" if package["unverified"] else ""), file=sys.stderr)
    return 0


def _cmd_parity(args, config):
    from converter.stages import parity

    if args.cityscapes and not os.path.isdir(args.cityscapes):
        raise ConverterError(f"--cityscapes {args.cityscapes}: not a folder")
    if (args.limit or args.split != "val") and not args.cityscapes:
        raise ConverterError("--split and --limit go with --cityscapes")
    result = parity.run(config, args.workdir, images=args.images, threads=args.threads, backends=args.backends,
                        cityscapes=args.cityscapes, split=args.split, limit=args.limit, workers=args.workers)
    print(f"report: {shown(result.paths[1])}")
    _print_parity_verdict(result.record)
    return 0


def _cmd_onnx(args, config):
    from converter.stages import onnx

    _print_result(onnx.run(config, args.workdir, shape=args.input_shape, force=args.force))
    return 0


def _cmd_openvino(args, config):
    from converter.stages import openvino

    _print_result(openvino.run(config, args.workdir, shape=args.input_shape, source=args.source, force=args.force))
    return 0


def _cmd_model_api(args, config):
    from converter.stages import model_api

    result = model_api.run(config, args.workdir, threads=args.threads, force=args.force)
    checks = result.record.params["check"]["results"]
    _print_result(result, ", vs parent: " + ", ".join(
        f"{p} argmax {c['agreement_min']:.4%}, probabilities within {c.get('max_probability_error', 0.0):.2g}"
        for p, c in checks.items()))
    return 0


def _cmd_validate(args, config):
    from converter.commands.validate import run_validate

    from converter.engine.scheduler import EngineOptions

    options = EngineOptions(executor=args.executor, address=args.ray_address, workers=args.workers,
                            threads=args.threads, chunk=args.chunk, trust_unsealed=args.trust_unsealed)
    result = run_validate(config, args.workdir, args.output, images=args.images, cityscapes=args.cityscapes,
                          split=args.split, backends=args.backends, limit=args.limit, options=options)
    for path in result.paths:
        print(shown(path))
    run = result.record["run"]
    print(f"validate: PASSED on {run['images']} image(s) ({run['computed']} computed, {run['reused']} reused) "
          f"in {run['seconds']} s", file=sys.stderr)
    return 0


def _cmd_diagnose(args, config):
    from converter.commands.diagnose import run

    for result in run(config, args.workdir, backend_name=args.backend, images=args.images, output=args.output,
                      shape=args.input_shape, threads=args.threads, first_only=args.first_only,
                      window_mb=args.window_mb):
        doc, first = result.record, result.record["first_divergence"]
        print(shown(result.paths[1]))
        print(shown(f"diagnose: {doc['backend']} on {os.path.basename(doc['image'])}: "
                    + ("no tensor over the budget" if first is None else
                       f"first divergence at {first['tensor']} ({first['op']}), rel. p99 {first['rel_p99']:.3g}")
                    + f"; {len(doc['layers'])} tensors compared, {len(doc['unmatched'])} unmatched"))
    return 0


def _cmd_init(args, config):
    from converter.commands.init import run_init

    raw = run_init(args)
    m = raw["model"]
    what = f"OCRNet-{m['backbone']}" if m["arch"] == "ocrnet" else f"a Paddle inference model (output {m['output_op']})"
    if any(f["name"].endswith(".json") for f in raw["files"] if f["role"] == "inference-model"):
        what += ", a Paddle 3 PIR program (converted with the Paddle 3 toolchain)"
    h, w = raw["converted"]["input"]["shape"][2:]
    print(shown(f"init: {args.output}: {what}, {m['num_classes']} classes, converted at {h}x{w}"))
    return 0


def _cmd_fetch(args, config):
    from converter.stages import fetch

    mode = "json" if args.json else "quiet" if args.quiet or not sys.stderr.isatty() else "bar"
    if args.mirror:
        fetch.check_url(args.mirror)
    result = fetch.run(config, None, output=args.output, cache_dir=args.cache_dir, mirror=args.mirror,
                       from_dir=args.from_dir, progress_mode=mode, roles=args.only,
                       timeouts=(args.connect_timeout, args.read_timeout), retries=args.retries)
    if args.json:
        print(json.dumps({"event": "summary", **result.record}, sort_keys=True))
    elif not args.quiet:
        for rec, path in zip(result.record["files"], result.paths):
            print(shown(f"{path}  ({rec['source']}, verified sha384)"))
    return 0


def _weights(args, config):
    """The weights for our model; None for a paddle-inference config (its
    model is the user's own)."""
    from converter.stages.weights import resolve_weights

    if config.arch == "paddle-inference":
        if args.weights != "auto":
            raise ConverterError(f"--weights: {config.path} is for a Paddle inference model, which has its weights; "
                                 "use --inference-model DIR")
        return None
    if args.inference_model:
        raise ConverterError(f"--inference-model: {config.path} is for an OCRNet checkpoint; make a config for the "
                             "inference model with `ocrnet-convert init --inference-model DIR --output CONFIG.yaml`")
    return resolve_weights(config, args.weights, args.seed, args.cache_dir, args.mirror, args.allow_unverified)


def _weights_detail(record):
    kind = record.weights["kind"]
    return f", weights: {kind}" + (f" (seed {record.weights['seed']})" if kind == "synthetic" else "")


def _cmd_export(args, config):
    from converter.pipeline import first_stage
    from converter.stages import export

    choice = _weights(args, config)
    if choice is None:
        if args.without_argmax or args.logits_output or args.output:
            raise ConverterError("--without-argmax, --logits-output and --output are for our own model's export")
        result = first_stage(config, args.workdir, inference_dir=args.inference_model,
                             allow_unverified=args.allow_unverified, force=args.force)
    else:
        result = export.run(config, args.workdir, choice, without_argmax=args.without_argmax,
                            logits_output=args.logits_output, force=args.force, output=args.output)
    _print_result(result, _weights_detail(result.record))
    return 0


def _cmd_convert(args, config):
    from converter.pipeline import convert

    def report(result):
        if result.stage == "manifest":
            _print_manifest(result)
        elif result.stage != "parity":
            _print_result(result, _weights_detail(result.record) if result.stage == "export" else "")
    results = convert(config, args.workdir, _weights(args, config), shape=args.input_shape, images=args.images,
                      threads=args.threads, force=args.force, report=report, inference_dir=args.inference_model,
                      allow_unverified=args.allow_unverified)
    _print_parity_verdict(next(r for r in results if r.stage == "parity").record)
    return 0


COMMANDS = {"convert": _cmd_convert, "fetch": _cmd_fetch, "export": _cmd_export, "onnx": _cmd_onnx,
            "openvino": _cmd_openvino, "model-api": _cmd_model_api, "quantize": _cmd_quantize, "parity": _cmd_parity,
            "predict": _cmd_predict, "evaluate": _cmd_evaluate,
            "validate": _cmd_validate, "init": _cmd_init, "diagnose": _cmd_diagnose,
            "manifest": _cmd_manifest, "package": _cmd_package, "bench": _cmd_bench}
# The folder each command locks, and how: writers exclusively, readers shared.
READERS = ("predict", "evaluate", "package", "validate", "diagnose")
# Commands whose own process loads paddle (the others load it in worker
# processes only; init only to read an inference model's program). They
# import it first, while the process has one thread: only then does holding
# SIGTERM during the import hold it everywhere (util/paddle_env.py says why).
LOADS_PADDLE = ("convert", "export", "onnx", "diagnose")


def _loads_paddle(args):
    return args.command in LOADS_PADDLE or (args.command == "init" and args.inference_model)


def _lock_folder(args):
    if args.command == "package" and args.verify:
        return None  # reads only the archive
    if args.command == "init":
        return None   # writes one file, atomically
    if args.command == "fetch":
        return args.output
    if args.command == "export" and args.output:
        return os.path.dirname(os.path.abspath(args.output))
    return args.workdir


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: workers stopped, temporary files removed."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _interruption(exc):
    """The SIGINT or SIGTERM (KeyboardInterrupt, Terminated) that `exc` was
    raised while handling, if any. A C extension whose initialisation a
    signal interrupts reports "ImportError: initialization failed" with the
    signal's exception as its cause, and a converter's error can wrap that
    in turn; the run was stopped by the signal all the same."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _stopped(exc):
    if isinstance(exc, Terminated):
        print("error: terminated", file=sys.stderr)
        return 143
    print("error: interrupted", file=sys.stderr)
    return 130


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

        # The config and the options are checked first, in pure Python that
        # starts no thread: a bad one is refused at once, not after the 2.5 s
        # of importing paddle, which must still come before any thread exists.
        config = None if args.command == "init" else load_config(args.config)
        _check_counts(args)
        if getattr(args, "output", None) and args.command != "init":   # init's --output is a file
            _output_folder(args.output)  # before the lock, which creates its folder
        if _loads_paddle(args):
            from converter.util.paddle_env import import_paddle
            import_paddle()
        folder = _lock_folder(args)
        lock = workdir_lock(folder, shared=args.command in READERS, log=info) if folder else contextlib.nullcontext()
        with lock:
            return COMMANDS[args.command](args, config)
    except GateFailure as exc:   # a failed gate: its verdict on stdout, where PASSED goes
        print(f"FAILED: {shown(exc)}")
        return exc.exit_code
    except ConverterError as exc:
        if _interruption(exc):
            return _stopped(_interruption(exc))
        print(f"error: {shown(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:   # Terminated too
        return _stopped(exc)
    except OSError as exc:
        # A user-caused I/O failure outside the stages' own checks: a full
        # disk, a read-only or unwritable folder, a path that is a file.
        what = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        print(f"error: {what}" + (f": {shown(exc.filename)}" if exc.filename else ""), file=sys.stderr)
        return DiskFullError.exit_code
    except Exception as exc:   # a library's own exception, raised because a signal interrupted it
        if _interruption(exc):
            return _stopped(_interruption(exc))
        raise
    finally:
        if argv is None:
            # The run is over (its outputs written or cleaned up): a SIGTERM or
            # SIGINT from now on must not turn its exit code into death by the
            # signal. Python's finalization puts the default action back for
            # signals that have a Python handler, and tearing down paddle,
            # OpenVINO and their threads takes a while; ignored signals it
            # leaves ignored.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, previous)
