"""OpenVINO on CPU.

precision='f32' sets INFERENCE_PRECISION_HINT to f32. Without it, a CPU with
AVX512-BF16 or AMX silently runs in bf16 (about 0.7 % of pixels flip here), so
the parity gate always asks for f32 explicitly; precision=None keeps the
device default, for information.
"""
import os

from converter.errors import StageError
from converter.runners.base import Runner


def precision_name(compiled):
    """The precision the CPU plugin actually chose, as 'f32', 'bf16' or 'f16'."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


class OpenVinoRunner(Runner):
    runtime = "openvino"

    def __init__(self, model_path, threads=2, logits=False, precision="f32"):
        """precision: the INFERENCE_PRECISION_HINT ("f32"), or None for the
        CPU's default (bf16 where the CPU has it)."""
        import openvino as ov

        super().__init__(model_path, threads, logits)

        if not os.path.isfile(model_path):
            raise StageError(f"missing model: {model_path} (run the openvino stage)")
        core = ov.Core()
        model = core.read_model(model_path)
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

    def infer(self, x):
        result = self.request.infer({0: x})
        # A tensor can carry several names; expose it under each of them.
        return {name: result[out] for out in self.compiled.outputs for name in out.get_names()}
