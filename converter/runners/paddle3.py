"""The Paddle 3 toolchain, for PIR programs (model.json): Paddle 3 Inference as
the reference, paddle2onnx 2.x as the converter.

paddlepaddle 3.x and paddle2onnx 2.x cannot share this process: the project's
stack is paddlepaddle 2.6.2 with numpy<2 (docs/paddle3.md says why), and one
Python process holds one paddle. `make setup` installs them in an isolated
interpreter (.venv/paddle3, pinned by requirements-paddle3.lock);
runners/paddle3_bridge.py is what that interpreter runs, in a child process
that dies with this one.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

from converter.errors import ConverterError, DiskFullError, StageError
from converter.runners.base import Runner
from converter.runners.paddle3_bridge import read_npy, write_npy

BRIDGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paddle3_bridge.py")
PYTHON_VARIABLE = "OCRNET_PADDLE3_PYTHON"
# converting a 70 M-parameter OCRNet takes about a minute here; a converter that
# hangs is stopped, not waited on for ever
CONVERT_SECONDS = 1800


def toolchain_python() -> str:
    """The isolated interpreter: $OCRNET_PADDLE3_PYTHON, else .venv/paddle3 beside this venv."""
    path = os.environ.get(PYTHON_VARIABLE) or os.path.join(sys.prefix, "paddle3", "bin", "python")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise ConverterError(f"this is a Paddle 3 PIR program, and the Paddle 3 toolchain (paddlepaddle 3.3.1, "
                             f"paddle2onnx 2.1.0) is not installed at {path}: run `make setup`, or set "
                             f"{PYTHON_VARIABLE} to a Python that has them")
    return path


def _command(*args: str) -> list[str]:
    return [toolchain_python(), "-I", BRIDGE, *args]


def _converter_says(lines: list[str]) -> str:
    """What paddle2onnx said was wrong: the line naming the op ("[OP: pd_op.pool2d]
    Adaptive only support static input shape.") or the opset it wants, before
    its closing "There are unsupported features." (which names nothing)."""
    specific = [ln for ln in lines if "[OP:" in ln or "opset_version to" in ln]
    found = (specific or [ln for ln in lines if "[ERROR]" in ln] or lines[-1:])
    return "; ".join(dict.fromkeys(ln.replace("[ERROR][Paddle2ONNX] ", "").replace("[Paddle2ONNX] ", "")[:200]
                                   for ln in found[:3]))


def _failure(what: str, returncode: int, stderr: bytes) -> StageError:
    """The bridge's own `error:` line, or how it died and what the converter said before."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    if any("No space left on device" in ln for ln in lines):
        # the toolchain writes the ONNX file and its temporary files too: a full disk there is a full disk
        return DiskFullError(f"{what}: no space left on device (the Paddle 3 toolchain's files)")
    said = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
    if said:
        return StageError(f"{what}: {said[-1]}")
    if returncode < 0:
        return StageError(f"{what}: the Paddle 3 toolchain died by {signal.Signals(-returncode).name}"
                          + (f" (paddle2onnx: {_converter_says(lines)})" if lines else ""))
    return StageError(f"{what}: the Paddle 3 toolchain failed (exit {returncode})"
                      + (f": {lines[-1][:200]}" if lines else ""))


def _start_child() -> None:
    from converter.util.process import die_with_parent

    die_with_parent()


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """{paddlepaddle, paddle2onnx, onnx, numpy: version} of the toolchain."""
    done = subprocess.run(_command("versions"), capture_output=True, timeout=120, preexec_fn=_start_child)
    if done.returncode != 0:
        raise _failure("the Paddle 3 toolchain", done.returncode, done.stderr)
    return json.loads(done.stdout)


def convert(model: str, params: str, out: str, *, opset: int, where: str | None = None) -> None:
    """paddle2onnx 2.x: the PIR program to an ONNX file (in a child: an
    unsupported opset aborts paddle2onnx's process)."""
    try:
        # paddle2onnx's C++ says which op it refuses on stdout: both streams are read
        done = subprocess.run(_command("convert", model, params, out, str(opset)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=CONVERT_SECONDS, preexec_fn=_start_child)
    except subprocess.TimeoutExpired:
        raise StageError(f"paddle2onnx {versions()['paddle2onnx']} did not finish converting {model} in "
                         f"{CONVERT_SECONDS} s") from None
    if done.returncode != 0 or not os.path.isfile(out):
        raise _failure(f"onnx: converting {where or model}", done.returncode, done.stdout)


def tap_names(model_dir: str) -> set[str]:
    """The float activations of the PIR program, by their ONNX names (what diagnose can compare)."""
    from converter.runners.pir_program import activations, read_pir

    return {name for name, _, _ in activations(read_pir(os.path.join(model_dir, "model.json")))}


def _program_for(model_dir: str, tmp: str, *, logits: bool, taps: Sequence[str]) -> str:
    """The program to load: the export's model.json, or a copy that also
    fetches the class scores (`logits`) and the taps, under their names."""
    from converter.runners.paddle_program import argmax_logits
    from converter.runners.pir_program import describe_pir, read_pir, with_fetches, with_taps

    path = os.path.join(model_dir, "model.json")
    program = read_pir(path)
    if not logits and not taps:
        return path
    if logits:
        program = with_fetches(program, [argmax_logits(describe_pir, program, path)], ["logits"])
    if taps:
        program = with_taps(program, list(taps))
    patched = os.path.join(tmp, "model.json")
    with open(patched, "w") as fh:
        json.dump(program, fh)
    return patched


class Paddle3Runner(Runner):
    """Paddle 3 Inference on a PIR export (model.json, model.pdiparams), in a
    child process of the isolated interpreter; CPU kernels without oneDNN
    (see paddle3_bridge._predictor)."""
    runtime = "paddle"

    def __init__(self, model_dir: str, *, threads: int = 2, logits: bool = False, taps: Sequence[str] = (),
                 **_settings: Any):
        """_settings: the legacy runner's oneDNN switches, which do not apply here."""
        super().__init__(model_dir, threads, logits)
        params = os.path.join(model_dir, "model.pdiparams")
        if not os.path.isfile(params):
            raise StageError(f"missing Paddle inference model file: {params} (run the export stage)")
        self._stderr = tempfile.TemporaryFile()
        with tempfile.TemporaryDirectory(prefix="paddle3-logits-") as tmp:
            program = _program_for(model_dir, tmp, logits=logits, taps=taps)
            self.child = subprocess.Popen(_command("serve", program, params, str(threads)), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._stderr, preexec_fn=_start_child)
            ready = self._line()
        self.output_names = ready["outputs"]
        self.info.update(mkldnn=False, memory_optim=False, effective_precision="f32", format="pir",
                         paddle=ready["versions"]["paddlepaddle"])

    def _line(self) -> dict:
        line = self.child.stdout.readline() if self.child.stdout else b""
        if not line:
            raise self._failed()
        return json.loads(line)

    def _failed(self) -> StageError:
        self.child.wait()
        self._stderr.seek(0)
        return _failure(f"paddle 3 on {self.model_path}", self.child.returncode, self._stderr.read())

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        assert self.child.stdin is not None and self.child.stdout is not None
        try:
            write_npy(self.child.stdin, np.asarray(x, np.float32))
            self.child.stdin.flush()
        except BrokenPipeError:
            pass   # it died: _line says how
        names = self._line()["outputs"]
        outputs = {n: read_npy(self.child.stdout) for n in names}
        if any(v is None for v in outputs.values()):
            raise self._failed()
        return outputs

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()

    def __del__(self) -> None:
        child = getattr(self, "child", None)
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
