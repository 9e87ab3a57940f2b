"""The backend registry: every way this project runs a model, in one list.

parity, bench, predict and evaluate take their backends from here, and the
CLI's --backend/--backends take these names. A backend is a runtime, the
artifact it loads, which side of the interface it is fed (the original's
normalised RGB or the converted models' raw pixels, see data.images), the
precision it computes in, and its role in parity: the reference, gated, or
reported only. Adding a backend (an INT8 IR, say) is one entry.
"""
import os
from dataclasses import dataclass

from converter.errors import ConverterError
from converter.records import StaleBuild, check_built_from, check_classes, ir_path, onnx_path, record_path, verified_record, verify_build


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: str           # converter.runners: paddle | onnxruntime | openvino
    stage: str             # the stage whose output it loads (records.STAGES)
    artifact: str          # that output: "paddle" (the export's folder), "onnx", or an IR's "FP32", "FP16", "INT8"
    side: str              # "original" or "converted": what it is fed
    precision: str = None  # OpenVINO's INFERENCE_PRECISION_HINT; None: the CPU's default
    role: str = "reported"  # "reference", "gated" or "reported"
    title: str = ""
    # the gate that applies: "f32" (tie-aware agreement) or a reduced
    # precision whose numeric budget is in the config (parity.budgets)
    budget: str = None
    optional: bool = False  # built by a separate step (make quantize): parity skips it when absent

    @property
    def gated(self):
        return self.role == "gated"

    def model(self, config):
        """Its model, relative to the workdir (named after the config's model)."""
        if self.artifact == "paddle":
            return "paddle"
        return onnx_path(config.name) if self.artifact == "onnx" else ir_path(self.artifact, config.name)

    def model_path(self, workdir, config):
        return os.path.join(workdir, self.model(config))

    def output_name(self, config):
        """The name of the class-map output of the model this backend loads."""
        return (config.original_output if self.side == "original" else config.converted_output).name


# The CPU's default precision is bf16 on AVX512-BF16/AMX CPUs and f32
# elsewhere; the bf16 budget holds a fortiori for f32.
BACKENDS = (
    Backend("paddle", "paddle", "export", "paddle", "original", None, "reference",
            "Paddle Inference on the exported original"),
    Backend("onnxruntime", "onnxruntime", "onnx", "onnx", "converted", None, "gated",
            "ONNX Runtime, CPU", budget="f32"),
    Backend("openvino-fp32-f32", "openvino", "openvino", "FP32", "converted", "f32", "gated",
            "FP32 IR at INFERENCE_PRECISION_HINT f32", budget="f32"),
    Backend("openvino-fp32-default", "openvino", "openvino", "FP32", "converted", None, "gated",
            "FP32 IR at the CPU's default precision (bf16 on AVX512-BF16/AMX)", budget="bf16"),
    Backend("openvino-fp16-default", "openvino", "openvino", "FP16", "converted", None, "gated",
            "FP16 IR at the CPU's default precision", budget="fp16"),
    Backend("openvino-int8-default", "openvino", "quantize", "INT8", "converted", None, "gated",
            "INT8 IR (NNCF post-training quantization) at the CPU's default precision", budget="int8",
            optional=True),
)
NAMES = tuple(b.name for b in BACKENDS)
DEFAULT = "openvino-fp32-f32"  # predict's and evaluate's: the FP32 IR at f32
REFERENCE = next(b for b in BACKENDS if b.role == "reference")


def get(name):
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise ConverterError(f"unknown backend '{name}' (choose from {', '.join(NAMES)})")


def select(names=None, with_reference=False):
    """The named backends in registry order (all when names is empty;
    check_artifacts then leaves out optional ones not built)."""
    chosen = {get(n).name for n in names or NAMES}
    if with_reference:
        chosen.add(REFERENCE.name)
    return [b for b in BACKENDS if b.name in chosen]


def check_artifacts(workdir, config, selected, named=True):
    """Every model the selected backends load, verified against its stage's
    record, and the build's class count against the config's; returns (the
    backends to run, {left-out backend: why}, {stage: its verified record}
    for the backends run).

    When the backends were not named (named=False), an optional one whose
    build is missing or stale (an INT8 IR quantized from an FP32 IR rebuilt
    since) is left out with the reason instead of failing the run: `make
    convert` must not fail on what `make quantize` built before. A build
    whose own files differ from its own record was tampered with: that is
    an error whether named or not."""
    left_out, records = {}, {}
    if not named:
        for b in [b for b in selected if b.optional]:
            if not os.path.lexists(record_path(workdir, b.stage)):
                left_out[b.name] = f"no {b.stage} record: run `ocrnet-convert {b.stage}`"
                continue
            record = verified_record(workdir, b.stage)
            try:
                check_built_from(workdir, b.stage, record)
            except StaleBuild as exc:
                left_out[b.name] = f"{exc} (not gated)"
                continue
            records[b.stage] = record
    kept = [b for b in selected if b.name not in left_out]
    records.update(verify_build(workdir, sorted({b.stage for b in kept} - set(records))))
    check_classes(workdir, config)
    return kept, left_out, records


def open_backend(backend, workdir, config, threads=2, logits=False, **options):
    """The backend's runner on the workdir's artifact."""
    from converter.runners import make_runner

    return make_runner(backend.runtime, backend.model_path(workdir, config), threads=threads, logits=logits,
                       precision=backend.precision, **options)
