"""The artifact layout, and reading stage records safely.

Every stage record (export.json, onnx.json, openvino.json) lists the files
the stage wrote with their size and sha256. A later stage reads its inputs
only through `verified_record`, which checks the record's form and every
listed file, so a tampered model file, a record from another build, or a mix
left by an interrupted run is refused in one line (StageError, exit 8)
instead of being converted.
"""
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, cast

from converter.errors import InputRefused, StageError, StaleBuild
from converter.layout import STAGES, Workdir, WorkdirLike
from converter.util.fsutil import file_digest, read_limited

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_RECORD_BYTES = 16 << 20


def read_json(path: str, what: str = "record") -> dict:
    """A JSON object from path, or a one-line StageError naming the file."""
    try:
        data = read_limited(path, MAX_RECORD_BYTES, what)
    except InputRefused as exc:
        raise StageError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise StageError(f"missing {path}") from None
    except OSError as exc:
        raise StageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise StageError(f"{path}: not a valid JSON {what} ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(obj, dict):
        raise StageError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _file_table(entries, path, where="files"):
    if not isinstance(entries, dict) or not entries:
        raise StageError(f"{path}: '{where}' must be a non-empty object of file name -> size and sha256")
    for name, meta in entries.items():
        if not _PLAIN_NAME.match(name):
            raise StageError(f"{path}: '{where}' names {name[:60]!r}, not a plain file name")
        if not (isinstance(meta, dict) and type(meta.get("size")) is int and meta["size"] >= 0
                and isinstance(meta.get("sha256"), str) and _SHA256.match(meta["sha256"])):
            raise StageError(f"{path}: '{where}.{name}' must have an integer size and a sha256")
    return entries


RECORD_SCHEMA = "ocrnet-convert/record/2"


@dataclass
class StageRecord:
    """What a conversion stage (export, onnx, openvino) wrote and from what.

    In JSON the params sit at the top level beside the common fields, with
    `schema`; `load_record` checks every field's type, so a reader never
    meets a record of another form."""
    stage: str
    files: dict                 # {name: {size, sha256}}, or {precision: {...}} for openvino
    key: str = ""               # the incremental key of inputs and parameters
    weights: Optional[dict] = None        # the export's provenance, carried along
    input: Optional[dict] = None
    output: Optional[dict] = None
    seconds: float = 0.0
    params: dict = field(default_factory=dict)  # the stage's own: input_shape, opset, source, ...

    def to_json(self):
        return {"schema": RECORD_SCHEMA, "stage": self.stage, "key": self.key, "files": self.files,
                "weights": self.weights, "input": self.input, "output": self.output,
                "seconds": self.seconds, **self.params}

    @property
    def input_shape(self):
        return tuple(self.params["input_shape"]) if "input_shape" in self.params else None


def write_record(folder: str, record: StageRecord) -> None:
    from converter.util.fsutil import write_json_atomic

    write_json_atomic(os.path.join(folder, STAGES[record.stage].record), record.to_json())


def _typed(obj, path, key, kinds):
    value = obj.get(key)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
        raise StageError(f"{path}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def load_record(path: str, stage: str) -> StageRecord:
    """The record at path as a StageRecord, checked for form (not yet against its files)."""
    try:
        record = read_json(path)
    except StageError as exc:
        if str(exc) == f"missing {path}":
            make = "make quantize" if stage == "quantize" else "make convert"
            raise StageError(f"missing {path}: run the {stage} stage first ({make})") from None
        raise
    if record.get("stage") != stage:
        raise StageError(f"{path}: not a {stage} record (stage is {str(record.get('stage'))[:40]!r})")
    files = cast(dict, record.get("files"))  # checked just below
    if STAGES[stage].grouped:
        if not isinstance(files, dict) or not files:
            raise StageError(f"{path}: 'files' must map each precision to its files")
        for group, entries in files.items():
            if not _PLAIN_NAME.match(str(group)):
                raise StageError(f"{path}: 'files' names the folder {str(group)[:60]!r}")
            _file_table(entries, path, f"files.{group}")
    else:
        _file_table(files, path)
    if record.get("schema") != RECORD_SCHEMA:
        raise StageError(f"{path}: not a record of this version (schema {str(record.get('schema'))[:40]!r}); "
                         f"rerun the {stage} stage with --force")
    params = {k: v for k, v in record.items() if k not in _COMMON}
    shape = params.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 4
                                  and all(type(d) is int and d > 0 for d in shape)):
        raise StageError(f"{path}: 'input_shape' must be four positive integers")
    return StageRecord(stage=stage, files=files, key=_typed(record, path, "key", (str,)) or "",
                       weights=_typed(record, path, "weights", (dict,)), input=_typed(record, path, "input", (dict,)),
                       output=_typed(record, path, "output", (dict,)),
                       seconds=_typed(record, path, "seconds", (int, float)) or 0.0, params=params)


_COMMON = ("schema", "stage", "key", "files", "weights", "input", "output", "seconds")


def read_record(workdir: WorkdirLike, stage: str) -> StageRecord:
    return load_record(Workdir.of(workdir).record(stage), stage)


def record_files(folder: str, stage: str, record: StageRecord) -> List[Tuple[str, dict]]:
    """[(path, meta)] of every file a record lists, under the stage's folder."""
    files = record.files
    if STAGES[stage].grouped:
        return [(os.path.join(folder, g, n), m) for g, entries in files.items() for n, m in entries.items()]
    return [(os.path.join(folder, n), m) for n, m in files.items()]


def files_match(folder: str, stage: str, record: StageRecord) -> Optional[Tuple[str, str]]:
    """The first listed file that differs from the record, as (path, why), or None."""
    for path, meta in record_files(folder, stage, record):
        size = os.path.getsize(path) if os.path.isfile(path) and not os.path.islink(path) else None
        if size is None:
            return path, "is missing or not a regular file"
        if size != meta["size"]:
            return path, f"has {size} bytes, the {stage} record says {meta['size']}"
        if file_digest(path) != meta["sha256"]:
            return path, f"does not match the sha256 the {stage} stage recorded"
    return None


def verified_record(workdir: Optional[WorkdirLike], stage: str, folder: Optional[str] = None) -> StageRecord:
    """The stage's record after checking every file it lists; a StageError
    naming the first file that is missing or differs (tampered, or left by
    an interrupted run). folder: the stage's folder, when not the layout's."""
    if folder is None:
        if workdir is None:
            raise ValueError("verified_record needs a workdir or the stage's folder")
        folder = Workdir.of(workdir).stage_folder(stage)
    record = load_record(os.path.join(folder, STAGES[stage].record), stage)
    bad = files_match(folder, stage, record)
    if bad:
        raise StageError(f"{bad[0]} {bad[1]}: refusing to use it (rerun the {stage} stage with --force)")
    return record


def check_built_from(workdir: WorkdirLike, stage: str, record: StageRecord) -> None:
    """A record's `built_from` ({path in the workdir: sha256}) must match the
    files there now; else StaleBuild."""
    built_from = record.params.get("built_from") or {}
    if not isinstance(built_from, dict):
        raise StageError(f"{Workdir.of(workdir).record(stage)}: 'built_from' must be an object")
    for rel, sha in sorted(built_from.items()):
        path = Workdir.of(workdir).file(str(rel))
        if ".." in str(rel).split("/") or os.path.isabs(str(rel)) or not os.path.isfile(path) \
                or file_digest(path) != sha:
            raise StaleBuild(f"{Workdir.of(workdir).record(stage)}: built from a {rel} that is no longer "
                             f"there (rebuilt or changed); rerun the {stage} stage")


def verify_build(workdir: WorkdirLike, stages: List[str]) -> Dict[str, StageRecord]:
    """{stage: record} for each stage, every file verified (see verified_record)
    and not stale (check_built_from)."""
    records = {stage: verified_record(workdir, stage) for stage in stages}
    for stage, record in records.items():
        check_built_from(workdir, stage, record)
    return records


def converted_input_shape(workdir: WorkdirLike, config=None, required: bool = False) -> Tuple[int, ...]:
    """The static [N,C,H,W] the converted models were built for, from the
    openvino or onnx record; else the config's converted shape (or a
    StageError when required)."""
    for stage in ("openvino", "onnx"):
        path = Workdir.of(workdir).record(stage)
        if os.path.lexists(path):
            shape = read_record(workdir, stage).input_shape
            if shape is None:
                raise StageError(f"{path}: no 'input_shape'")
            return shape
    if required or config is None:
        raise StageError(f"missing {Workdir.of(workdir).record('openvino')}: run make convert first")
    return config.converted_shape


def check_classes(workdir: WorkdirLike, config) -> None:
    """The build's class count (its export record's) must be the config's: a
    19-class build read with a 20-class config would be reported with the
    wrong names, an 18-class one fail deep in a worker."""
    record = read_record(workdir, "export")
    built = record.params.get("num_classes")
    if type(built) is not int:
        raise StageError(f"{Workdir.of(workdir).record('export')} does not say how many classes the build has "
                         "(a build of an older version): rerun the export stage with --force")
    if built != config.num_classes:
        raise StageError(f"the build in {workdir} has {built} classes, the config {config.path} "
                         f"{config.num_classes} (model.num_classes): use the config it was built with")


def weights_summary(weights: Optional[dict]) -> str:
    """Which weights a build carries, in a few words (a model card's first line)."""
    weights = weights or {}
    kind = weights.get("kind")
    if kind == "synthetic":
        return f"SYNTHETIC weights (seed {weights.get('seed')}), not the published model"
    if kind == "inference-model":
        model = (weights.get("files") or {}).get("inference-model") or {}
        return f"the user's inference model {os.path.dirname(str(model.get('path', '')))}"
    if str(weights.get("source", "")).startswith("http"):
        return "the published PaddleSeg weights"
    return f"the user's checkpoint {os.path.basename(str(weights.get('file', '')))}"


def export_weights(workdir: WorkdirLike) -> Optional[dict]:
    """The weights' provenance recorded by the export stage, or None."""
    if not os.path.lexists(Workdir.of(workdir).record("export")):
        return None
    return read_record(workdir, "export").weights


def current_record(folder: str, stage: str, key: str) -> Optional[StageRecord]:
    """The stage's record in folder if the stage is up to date (same key,
    every listed output unchanged), else None."""
    try:
        record = verified_record(None, stage, folder)
    except StageError:
        return None
    return record if record.key == key else None
