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

from converter.errors import StageError
from converter.util.fsutil import InputRefused, file_digest, read_limited

# Converted model files are named after the config's `name` (their stem),
# relative to the workdir.

# stage -> (folder in the workdir, record file name, whether `files` is
# grouped by subfolder, as openvino's {FP32: {...}, FP16: {...}})
STAGES = {
    "export": ("paddle", "export.json", False),
    "onnx": ("onnx", "onnx.json", False),
    "openvino": ("openvino", "openvino.json", True),
    # the INT8 IR sits beside FP32 and FP16, with its own record: `make
    # quantize` is a separate step from `make convert`
    "quantize": (os.path.join("openvino", "INT8"), "quantize.json", False),
    # the Model API flavour of each IR above ({FP32: ..., FP16: ..., INT8: ...})
    "model_api": (os.path.join("openvino", "model_api"), "model_api.json", True),
}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_RECORD_BYTES = 16 << 20


def onnx_path(stem):
    return os.path.join("onnx", stem + ".onnx")


def ir_path(precision, stem):
    """The IR's .xml for "FP32", "FP16" or "INT8"."""
    return os.path.join("openvino", precision, stem + ".xml")


def flavour_path(precision, stem):
    """The Model API flavour's .xml of the IR of that precision."""
    return os.path.join(STAGES["model_api"][0], precision, stem + ".xml")


def record_path(workdir, stage):
    folder, name, _ = STAGES[stage]
    return os.path.join(workdir, folder, name)


def read_json(path, what="record"):
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
    weights: dict = None        # the export's provenance, carried along
    input: dict = None
    output: dict = None
    seconds: float = 0.0
    params: dict = field(default_factory=dict)  # the stage's own: input_shape, opset, source, ...

    def to_json(self):
        return {"schema": RECORD_SCHEMA, "stage": self.stage, "key": self.key, "files": self.files,
                "weights": self.weights, "input": self.input, "output": self.output,
                "seconds": self.seconds, **self.params}

    @property
    def input_shape(self):
        return tuple(self.params["input_shape"]) if "input_shape" in self.params else None


def write_record(folder, record):
    from converter.util.fsutil import write_json_atomic

    write_json_atomic(os.path.join(folder, STAGES[record.stage][1]), record.to_json())


def _typed(obj, path, key, kinds):
    value = obj.get(key)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
        raise StageError(f"{path}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def load_record(path, stage):
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
    files = record.get("files")
    if STAGES[stage][2]:
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
    return StageRecord(stage, files, _typed(record, path, "key", (str,)) or "",
                       _typed(record, path, "weights", (dict,)), _typed(record, path, "input", (dict,)),
                       _typed(record, path, "output", (dict,)),
                       _typed(record, path, "seconds", (int, float)) or 0.0, params)


_COMMON = ("schema", "stage", "key", "files", "weights", "input", "output", "seconds")


def read_record(workdir, stage):
    return load_record(record_path(workdir, stage), stage)


def record_files(folder, stage, record):
    """[(path, meta)] of every file a record lists, under the stage's folder."""
    files = record.files
    if STAGES[stage][2]:
        return [(os.path.join(folder, g, n), m) for g, entries in files.items() for n, m in entries.items()]
    return [(os.path.join(folder, n), m) for n, m in files.items()]


def files_match(folder, stage, record):
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


def verified_record(workdir, stage, folder=None):
    """The stage's record after checking every file it lists; a StageError
    naming the first file that is missing or differs (tampered, or left by
    an interrupted run). folder: the stage's folder, when not the layout's."""
    folder = folder or os.path.join(workdir, STAGES[stage][0])
    record = load_record(os.path.join(folder, STAGES[stage][1]), stage)
    bad = files_match(folder, stage, record)
    if bad:
        raise StageError(f"{bad[0]} {bad[1]}: refusing to use it (rerun the {stage} stage with --force)")
    return record


class StaleBuild(StageError):
    """A build whose own files are intact but which was made from inputs
    that have changed since (an INT8 IR of an FP32 IR rebuilt since)."""


def check_built_from(workdir, stage, record):
    """A record's `built_from` ({path in the workdir: sha256}) must match the
    files there now; else StaleBuild."""
    built_from = record.params.get("built_from") or {}
    if not isinstance(built_from, dict):
        raise StageError(f"{record_path(workdir, stage)}: 'built_from' must be an object")
    for rel, sha in sorted(built_from.items()):
        path = os.path.join(workdir, str(rel))
        if ".." in str(rel).split("/") or os.path.isabs(str(rel)) or not os.path.isfile(path) \
                or file_digest(path) != sha:
            raise StaleBuild(f"{record_path(workdir, stage)}: built from a {rel} that is no longer "
                             f"there (rebuilt or changed); rerun the {stage} stage")


def verify_build(workdir, stages):
    """{stage: record} for each stage, every file verified (see verified_record)
    and not stale (check_built_from)."""
    records = {stage: verified_record(workdir, stage) for stage in stages}
    for stage, record in records.items():
        check_built_from(workdir, stage, record)
    return records


def converted_input_shape(workdir, config=None, required=False):
    """The static [N,C,H,W] the converted models were built for, from the
    openvino or onnx record; else the config's converted shape (or a
    StageError when required)."""
    for stage in ("openvino", "onnx"):
        path = record_path(workdir, stage)
        if os.path.lexists(path):
            shape = read_record(workdir, stage).input_shape
            if shape is None:
                raise StageError(f"{path}: no 'input_shape'")
            return shape
    if required or config is None:
        raise StageError(f"missing {record_path(workdir, 'openvino')}: run make convert first")
    return config.converted_shape


def check_classes(workdir, config):
    """The build's class count (its export record's) must be the config's: a
    19-class build read with a 20-class config would be reported with the
    wrong names, an 18-class one fail deep in a worker."""
    record = read_record(workdir, "export")
    built = record.params.get("num_classes")
    if type(built) is not int:
        raise StageError(f"{record_path(workdir, 'export')} does not say how many classes the build has "
                         "(a build of an older version): rerun the export stage with --force")
    if built != config.num_classes:
        raise StageError(f"the build in {workdir} has {built} classes, the config {config.path} "
                         f"{config.num_classes} (model.num_classes): use the config it was built with")


def weights_summary(weights):
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


def export_weights(workdir):
    """The weights' provenance recorded by the export stage, or None."""
    if not os.path.lexists(record_path(workdir, "export")):
        return None
    return read_record(workdir, "export").weights
