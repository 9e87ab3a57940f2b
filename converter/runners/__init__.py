"""One runner per runtime, all with the interface of base.Runner:

    runner = make_runner(runtime, model_path, threads=2, **options)
    outputs = runner.infer(x)   # {output name: ndarray}

Heavy libraries are imported inside the runner modules, only when used.
Which model a backend runs, and how, is in converter.backends.
"""
from converter.errors import ConverterError, StageError

RUNTIMES = ("paddle", "onnxruntime", "openvino")


def runner_class(runtime):
    if runtime == "paddle":
        from converter.runners.paddle import PaddleRunner as cls
    elif runtime == "onnxruntime":
        from converter.runners.onnxruntime import OrtRunner as cls
    elif runtime == "openvino":
        from converter.runners.openvino import OpenVinoRunner as cls
    else:
        raise ConverterError(f"unknown runtime '{runtime}' (choose from {', '.join(RUNTIMES)})")
    return cls


def make_runner(runtime, model_path, threads=2, **options):
    cls = runner_class(runtime)
    try:
        return cls(model_path, threads=threads, **options)
    except ConverterError:
        raise
    except Exception as exc:
        # The runtimes' own messages run to several lines with C++ source
        # locations; the last line says what is wrong with the file.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise StageError(f"{runtime} cannot load {model_path}: {(lines or [type(exc).__name__])[-1][:200]}") from None


def tap_names(runtime, model_path):
    """The intermediate tensors a runtime's model can return by name (taps)."""
    if runtime == "paddle":
        from converter.runners.paddle import tap_names as names
    elif runtime == "onnxruntime":
        from converter.runners.onnxruntime import tap_names as names
    else:
        from converter.runners.openvino import tap_names as names
    return names(model_path)
