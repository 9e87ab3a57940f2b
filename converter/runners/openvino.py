"""OpenVINO on CPU.

precision='f32' sets INFERENCE_PRECISION_HINT to f32. Without it, a CPU with
AVX512-BF16 or AMX silently runs in bf16 (about 0.7 % of pixels flip here), so
the parity gate always asks for f32 explicitly; precision=None keeps the
device default, for information.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from converter.errors import StageError
from converter.runners.base import Runner

if TYPE_CHECKING:
    import numpy as np


def precision_name(compiled: Any) -> str:
    """The precision the CPU plugin actually chose, as 'f32', 'bf16' or 'f16'."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


FQ_SUFFIX = "/fq_output_0"


def activation_fake_quantizes(model: Any) -> dict[str, Any]:
    """{tensor name: FakeQuantize op} of every activation NNCF quantized
    (weights excluded: their FakeQuantize reads a Constant). The tensor is
    named by the FakeQuantize's input, e.g. `relu_141.tmp_0`, or
    `batch_norm_30.tmp_2` where the FakeQuantize follows a folded BatchNorm's
    Add (its friendly name is then the Add's, a parameter's name); an input
    without names falls back to the friendly name less `/fq_output_0`."""
    found: dict[str, Any] = {}
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() != "FakeQuantize" or not name.endswith(FQ_SUFFIX):
            continue
        source = op.input_value(0)
        if source.get_node().get_type_name() in ("Constant", "Convert"):
            continue
        for tensor in sorted(source.get_names()) or [name[: -len(FQ_SUFFIX)]]:
            found.setdefault(tensor, op)
    return found


def tap_ports(model: Any) -> dict[str, Any]:
    """{tensor name: output port} of every named tensor of the model. Where
    NNCF put a FakeQuantize on a tensor, the name means the FakeQuantize's
    output: the value the rest of the network computes with."""
    ports: dict[str, Any] = {}
    for op in model.get_ordered_ops():
        for port in op.outputs():
            for name in port.get_names():
                ports.setdefault(name, port)
    for tensor, fq in activation_fake_quantizes(model).items():
        ports[tensor] = fq.output(0)
    return ports


def tap_names(model_path: str) -> set[str]:
    import openvino as ov

    return set(tap_ports(ov.Core().read_model(model_path)))


class OpenVinoRunner(Runner):
    runtime = "openvino"

    def __init__(self, model_path: str, threads: int = 2, logits: bool = False, precision: str | None = "f32",
                 taps: Sequence[str] = (), shape: Sequence[int] | None = None):
        """precision: the INFERENCE_PRECISION_HINT ("f32"), or None for the
        CPU's default (bf16 where the CPU has it). taps: tensor names to
        return too (tap_ports); shape: reshape the model first (the IRs are
        shape-agnostic)."""
        import openvino as ov

        super().__init__(model_path, threads, logits)

        if not os.path.isfile(model_path):
            raise StageError(f"missing model: {model_path} (run the openvino stage)")
        core = ov.Core()
        model = core.read_model(model_path)
        if shape is not None:
            model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
        if taps:
            self._add_taps(model, taps)
        if logits:
            argmax = next(op for op in model.get_ordered_ops() if op.get_type_name() in ("TopK", "ArgMax"))
            extra = model.add_outputs([argmax.input_value(0)])[0]
            extra.get_tensor().set_names({"logits"})
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.info.update(requested_precision=precision or "default",
                         effective_precision=precision_name(self.compiled))

    @staticmethod
    def _add_taps(model: Any, taps: Sequence[str]) -> None:
        """One added output per tensor, named by all its taps: a tensor with two
        names (paddle2onnx 2.x gives many two) added twice kept only the
        second name, and the first tap was missing from the results."""
        ports = tap_ports(model)
        groups: dict[tuple[str, int], tuple[Any, list[str]]] = {}
        for name in taps:
            port = ports[name]
            groups.setdefault((port.get_node().get_friendly_name(), port.get_index()), (port, []))[1].append(name)
        for port, names in groups.values():
            extra = model.add_outputs([port])[0]
            extra.get_tensor().set_names({"tap:" + n for n in names})

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        result = self.request.infer({0: x})
        # A tensor can carry several names; expose it under each of them (a tap under its own).
        out = {}
        for port in self.compiled.outputs:
            names = port.get_names()
            taps = [n[4:] for n in names if n.startswith("tap:")]
            for name in taps or names:
                out[name] = result[port]
        return out
