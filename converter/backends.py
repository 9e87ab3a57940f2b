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
from typing import Dict, List, Optional, Sequence, Tuple

from converter.errors import ConverterError, StaleBuild
from converter.layout import Workdir, WorkdirLike, ir_path, onnx_path
from converter.records import check_built_from, check_classes, verified_record, verify_build


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: str           # converter.runners: paddle | onnxruntime | openvino
    stage: str             # the stage whose output it loads (layout.STAGES)
    artifact: str          # that output: "paddle" (the export's folder), "onnx", or an IR's "FP32", "FP16", "INT8"
    side: str              # "original" or "converted": what it is fed
    precision: Optional[str] = None  # OpenVINO's INFERENCE_PRECISION_HINT; None: the CPU's default
    role: str = "reported"  # "reference", "gated" or "reported"
    title: str = ""
    # the gate that applies: "f32" (tie-aware agreement) or a reduced
    # precision whose numeric budget is in the config (parity.budgets)
    budget: Optional[str] = None
    optional: bool = False  # built by a separate step (make quantize): parity skips it when absent

    @property
    def gated(self):
        return self.role == "gated"

    def model(self, config) -> str:
        """Its model, relative to the workdir (named after the config's model)."""
        if self.artifact == "paddle":
            return "paddle"
        return onnx_path(config.name) if self.artifact == "onnx" else ir_path(self.artifact, config.name)

    def model_path(self, workdir: WorkdirLike, config) -> str:
        return Workdir.of(workdir).file(self.model(config))

    def output_name(self, config) -> str:
        """The name of the class-map output of the model this backend loads."""
        return (config.original_output if self.side == "original" else config.converted_output).name


# The CPU's default precision is bf16 on AVX512-BF16/AMX CPUs and f32
# elsewhere; the bf16 budget holds a fortiori for f32.
BACKENDS = (
    Backend(name="paddle", runtime="paddle", stage="export", artifact="paddle", side="original",
            role="reference", title="Paddle Inference on the exported original"),
    Backend(name="onnxruntime", runtime="onnxruntime", stage="onnx", artifact="onnx", side="converted",
            role="gated", title="ONNX Runtime, CPU", budget="f32"),
    Backend(name="openvino-fp32-f32", runtime="openvino", stage="openvino", artifact="FP32", side="converted",
            precision="f32", role="gated", title="FP32 IR at INFERENCE_PRECISION_HINT f32", budget="f32"),
    Backend(name="openvino-fp32-default", runtime="openvino", stage="openvino", artifact="FP32", side="converted",
            role="gated", title="FP32 IR at the CPU's default precision (bf16 on AVX512-BF16/AMX)", budget="bf16"),
    Backend(name="openvino-fp16-default", runtime="openvino", stage="openvino", artifact="FP16", side="converted",
            role="gated", title="FP16 IR at the CPU's default precision", budget="fp16"),
    Backend(name="openvino-int8-default", runtime="openvino", stage="quantize", artifact="INT8", side="converted",
            role="gated", title="INT8 IR (NNCF post-training quantization) at the CPU's default precision",
            budget="int8", optional=True),
)
NAMES = tuple(b.name for b in BACKENDS)
DEFAULT = "openvino-fp32-f32"  # predict's and evaluate's: the FP32 IR at f32
REFERENCE = next(b for b in BACKENDS if b.role == "reference")


def get(name: str) -> Backend:
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise ConverterError(f"unknown backend '{name}' (choose from {', '.join(NAMES)})")


def select(names: Optional[Sequence[str]] = None, with_reference: bool = False) -> List[Backend]:
    """The named backends in registry order (all when names is empty;
    check_artifacts then leaves out optional ones not built)."""
    chosen = {get(n).name for n in names or NAMES}
    if with_reference:
        chosen.add(REFERENCE.name)
    return [b for b in BACKENDS if b.name in chosen]


def check_artifacts(workdir: WorkdirLike, config, selected: List[Backend],
                    named: bool = True) -> Tuple[List[Backend], Dict[str, str], dict]:
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
            if not os.path.lexists(Workdir.of(workdir).record(b.stage)):
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


def open_backend(backend: Backend, workdir: WorkdirLike, config, threads: int = 2, logits: bool = False, **options):
    """The backend's runner on the workdir's artifact."""
    from converter.runners import make_runner

    return make_runner(backend.runtime, backend.model_path(workdir, config), threads=threads, logits=logits,
                       precision=backend.precision, **options)
