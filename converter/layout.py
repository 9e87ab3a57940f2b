"""The artifact layout: every path inside a workdir is named here, and only here.

Stages, the engine and commands take a `Workdir` and ask it for a path
(`workdir.ir("FP32", stem)`, `workdir.record("onnx")`); no other module
joins a folder name onto a workdir (tests/test_layers.py checks). Converted
model files are named after the config's `name`, their stem.
"""
import os
from dataclasses import dataclass
from typing import Dict, Union


@dataclass(frozen=True)
class Stage:
    """Where a conversion stage writes, inside the workdir."""
    folder: str         # relative to the workdir
    record: str         # the record's file name, in that folder
    grouped: bool       # `files` grouped by subfolder, as openvino's {FP32: {...}, FP16: {...}}


STAGES: Dict[str, Stage] = {
    "export": Stage(folder="paddle", record="export.json", grouped=False),
    "onnx": Stage(folder="onnx", record="onnx.json", grouped=False),
    "openvino": Stage(folder="openvino", record="openvino.json", grouped=True),
    # the INT8 IR sits beside FP32 and FP16, with its own record: `make
    # quantize` is a separate step from `make convert`
    "quantize": Stage(folder=os.path.join("openvino", "INT8"), record="quantize.json", grouped=False),
    # the Model API flavour of each IR above ({FP32: ..., FP16: ..., INT8: ...})
    "model_api": Stage(folder=os.path.join("openvino", "model_api"), record="model_api.json", grouped=True),
}


def onnx_path(stem: str) -> str:
    """The ONNX model, relative to the workdir."""
    return os.path.join(STAGES["onnx"].folder, stem + ".onnx")


def ir_path(precision: str, stem: str) -> str:
    """The IR's .xml for "FP32", "FP16" or "INT8", relative to the workdir."""
    return os.path.join(STAGES["openvino"].folder, precision, stem + ".xml")


def flavour_path(precision: str, stem: str) -> str:
    """The Model API flavour's .xml of the IR of that precision, relative to the workdir."""
    return os.path.join(STAGES["model_api"].folder, precision, stem + ".xml")


class Workdir(os.PathLike):
    """A build folder. os.fspath() and str() give its path, so it goes
    wherever a path does; its properties and methods give the paths inside."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]):
        self.path = os.fspath(path)

    @classmethod
    def of(cls, path: Union[str, "os.PathLike[str]", "Workdir"]) -> "Workdir":
        return path if isinstance(path, Workdir) else cls(path)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"Workdir({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workdir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def file(self, relative: str) -> str:
        """A path that a record or the manifest gives relative to the workdir."""
        return os.path.join(self.path, relative)

    def stage_folder(self, stage: str) -> str:
        return os.path.join(self.path, STAGES[stage].folder)

    def record(self, stage: str) -> str:
        return os.path.join(self.stage_folder(stage), STAGES[stage].record)

    @property
    def paddle(self) -> str:
        """The exported original (the export stage's folder)."""
        return self.stage_folder("export")

    def onnx(self, stem: str) -> str:
        return self.file(onnx_path(stem))

    def ir(self, precision: str, stem: str) -> str:
        return self.file(ir_path(precision, stem))

    def flavour(self, precision: str, stem: str) -> str:
        return self.file(flavour_path(precision, stem))

    @property
    def download(self) -> str:
        """fetch's default output folder."""
        return self.file("download")

    @property
    def parity(self) -> str:
        return self.file("parity")

    @property
    def parity_report(self) -> str:
        return os.path.join(self.parity, "report.json")

    @property
    def parity_markdown(self) -> str:
        return os.path.join(self.parity, "report.md")

    def diagnose(self, name: str) -> str:
        """Where parity's failure hint sends diagnose's report for a backend."""
        return os.path.join(self.file("diagnose"), name)

    @property
    def bench(self) -> str:
        return self.file("bench")

    @property
    def bench_record(self) -> str:
        return os.path.join(self.bench, "bench.json")

    @property
    def bench_markdown(self) -> str:
        return os.path.join(self.bench, "bench.md")

    @property
    def manifest(self) -> str:
        return self.file("MANIFEST.json")

    @property
    def model_card(self) -> str:
        return self.file("README.md")


# what the functions that take a workdir accept: a Workdir, or its path
WorkdirLike = Union[str, "os.PathLike[str]", Workdir]
