"""One runner per runtime, all with the interface of base.Runner:

    runner = make_runner(runtime, model_path, threads=2, **options)
    outputs = runner.infer(x)   # {output name: ndarray}

Heavy libraries are imported inside the runner modules, only when used.
Which model a backend runs, and how, is in converter.backends.
"""
from __future__ import annotations

import os
from typing import Any

from converter.errors import ConverterError, StageError
from converter.runners.base import Runner

RUNTIMES = ("paddle", "onnxruntime", "openvino")


def is_pir_export(model_path: str) -> bool:
    """A Paddle export folder that holds a PIR program (model.json) instead of model.pdmodel."""
    return os.path.isfile(os.path.join(model_path, "model.json"))


def runner_class(runtime: str, model_path: str = "") -> type[Runner]:
    if runtime == "paddle" and model_path and is_pir_export(model_path):
        from converter.runners.paddle3 import Paddle3Runner
        return Paddle3Runner
    if runtime == "paddle":
        from converter.runners.paddle import PaddleRunner
        return PaddleRunner
    if runtime == "onnxruntime":
        from converter.runners.onnxruntime import OrtRunner
        return OrtRunner
    if runtime == "openvino":
        from converter.runners.openvino import OpenVinoRunner
        return OpenVinoRunner
    raise ConverterError(f"unknown runtime '{runtime}' (choose from {', '.join(RUNTIMES)})")


def make_runner(runtime: str, model_path: str, threads: int = 2, **options: Any) -> Runner:
    cls = runner_class(runtime, model_path)
    try:
        return cls(model_path, threads=threads, **options)
    except ConverterError:
        raise
    except Exception as exc:
        # The runtimes' own messages run to several lines with C++ source
        # locations; the last line says what is wrong with the file.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise StageError(f"{runtime} cannot load {model_path}: {(lines or [type(exc).__name__])[-1][:200]}") from None


def tap_names(runtime: str, model_path: str) -> set[str]:
    """The intermediate tensors a runtime's model can return by name (taps)."""
    if runtime == "paddle" and is_pir_export(model_path):
        from converter.runners import paddle3
        return paddle3.tap_names(model_path)
    if runtime == "paddle":
        from converter.runners import paddle
        return paddle.tap_names(model_path)
    if runtime == "onnxruntime":
        from converter.runners import onnxruntime
        return onnxruntime.tap_names(model_path)
    from converter.runners import openvino
    return openvino.tap_names(model_path)
