"""One runner per backend, all with the same two calls:

    runner = make_runner(kind, model_path, threads=2, **options)
    outputs = runner.infer(x)   # {output name: ndarray}

Heavy libraries are imported inside the runner modules, only when used.
"""
from converter.errors import ConverterError, StageError

KINDS = ("paddle", "onnxruntime", "openvino")


def make_runner(kind, model_path, threads=2, **options):
    if kind == "paddle":
        from converter.runners.paddle import PaddleRunner as cls
    elif kind == "onnxruntime":
        from converter.runners.onnxruntime import OrtRunner as cls
    elif kind == "openvino":
        from converter.runners.openvino import OpenVinoRunner as cls
    else:
        raise ConverterError(f"unknown backend '{kind}' (choose from {', '.join(KINDS)})")
    runner = cls()
    try:
        runner.load(model_path, threads=threads, **options)
    except ConverterError:
        raise
    except Exception as exc:
        # The runtimes' own messages run to several lines with C++ source
        # locations; the last line says what is wrong with the file.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise StageError(f"{kind} cannot load {model_path}: {(lines or [type(exc).__name__])[-1][:200]}") from None
    return runner
