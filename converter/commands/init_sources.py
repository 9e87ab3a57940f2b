"""What `init` reads: a checkpoint, an inference model, a PaddleSeg training config.

Each reader returns plain facts (the architecture, the class count, the
normalisation, sizes) and refuses what it cannot vouch for in one line.
Nothing here runs code from the files: checkpoints go through the safe
pickle reader, programs are parsed as protobuf, YAML with safe_load, and a
training config's `_base_` files are read from the local disk only.
"""
import hashlib
import os

from converter.errors import CheckpointError, ConverterError

MAX_YAML_BYTES = 1 << 20
MAX_BASES = 16


def _file_facts(path, role, data=None):
    """The config's files entry of a user's file (source: its file:// URL)."""
    import pathlib

    if data is None:
        from converter.util.fsutil import file_digest
        sha384, size = file_digest(path, "sha384"), os.path.getsize(path)
    else:
        sha384, size = hashlib.sha384(data).hexdigest(), len(data)
    return {"name": os.path.basename(path), "size": size, "sha384": sha384,
            "source": pathlib.Path(os.path.abspath(path)).as_uri(), "role": role}


def from_checkpoint(path):
    """{backbone, num_classes, file}: the family member whose keys and shapes
    the checkpoint has (read without running it), or a CheckpointError."""
    import numpy as np

    from converter.family import identify, nearest
    from converter.weights.checkpoint import read_state_dict

    if not os.path.isfile(path):
        raise CheckpointError(f"--weights {path}: not a file")
    state, sha384 = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = identify(shapes)
    if found is None:
        raise CheckpointError(f"{path}: not an OCRNet-HRNet of PaddleSeg release-2.3's family "
                              f"(W18_Small_V1/V2, W18-W64): {nearest(shapes)}")
    # what export refuses (a silent cast would change the model), init refuses too
    wrong = [f"{k} is {v.dtype.name}" for k, v in state.items() if k.startswith(("backbone.", "head."))
             and v.dtype.newbyteorder("=") != np.float32]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} parameter(s) not float32 (export would refuse them): {wrong[0]}")
    file = dict(_file_facts(path, "checkpoint", b""), sha384=sha384, size=os.path.getsize(path))
    return {"backbone": found[0], "num_classes": found[1], "file": file}


def _read_yaml(path, what):
    import yaml

    from converter.errors import InputRefused

    from converter.util.fsutil import read_limited
    from converter.util.yaml_bounded import safe_load

    try:
        raw = safe_load(read_limited(path, MAX_YAML_BYTES, what))
    except InputRefused as exc:
        raise ConverterError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConverterError(f"cannot read {what} {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConverterError(f"{path}: not valid YAML ({str(exc).splitlines()[0][:100]})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConverterError(f"{path}: a {what} must be a mapping")
    return raw or {}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _normalize(transforms, where):
    """mean and std (on values scaled to [0, 1]) of the Normalize transform;
    PaddleSeg's defaults are 0.5 and 0.5. (None, None) when there is none."""
    if transforms is not None and not isinstance(transforms, list):
        raise ConverterError(f"{where}: transforms must be a list")
    for t in transforms or ():
        if isinstance(t, dict) and t.get("type") == "Normalize":
            mean, std = t.get("mean", [0.5] * 3), t.get("std", [0.5] * 3)
            # PaddleX's Normalize also takes one number for the three channels
            mean, std = ([v] * 3 if _is_number(v) else v for v in (mean, std))
            ok = all(isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v) for v in (mean, std))
            if not ok or any(x == 0 for x in std):
                raise ConverterError(f"{where}: Normalize needs three means and three non-zero stds")
            return [float(x) for x in mean], [float(x) for x in std]
    return None, None


# (program stem, its YAML): PaddleSeg's exporter, and PaddleX's layout
LAYOUTS = (("model", "deploy.yaml"), ("inference", "inference.yml"))


def export_files(folder):
    """(program, parameters, YAML, format) of an export folder: PaddleSeg's
    model.{pdmodel|json} + model.pdiparams + deploy.yaml, or PaddleX's
    inference.{pdmodel|json} + inference.pdiparams + inference.yml. The
    folder says which; the YAML's Deploy.model is not read (Paddle 3's
    exporters still write `.pdmodel` there when they save `.json`)."""
    if not os.path.isdir(folder):
        raise ConverterError(f"--inference-model {folder}: not a folder")
    for stem, yaml_name in LAYOUTS:
        for ext, fmt in ((".pdmodel", "legacy"), (".json", "pir")):
            program = os.path.join(folder, stem + ext)
            if os.path.isfile(program):
                params = os.path.join(folder, stem + ".pdiparams")
                if not os.path.isfile(params):
                    raise ConverterError(f"{params}: missing (the parameters of {os.path.basename(program)})")
                return program, params, os.path.join(folder, yaml_name), fmt
    raise ConverterError(f"{folder}: no inference model (PaddleSeg's exporter writes model.pdmodel or, under "
                         "Paddle 3, model.json, with model.pdiparams and deploy.yaml; PaddleX writes "
                         "inference.json, inference.pdiparams and inference.yml)")


def _program_facts(program, params, fmt):
    """(describe's facts, parameter count) of either format, read without running it."""
    if fmt == "pir":
        from converter.runners.pir_program import check_parameters_file, describe_pir, parameter_count, read_pir

        graph = read_pir(program)
        facts = describe_pir(graph, program)
        check_parameters_file(graph, params)
        # the argmax the export stage appends is fetched under the program's own output name
        return dict(facts, free_name=facts["output"], format="pir"), parameter_count(graph)
    from converter.runners.paddle_program import check_parameters_file, describe, read_program

    desc = read_program(program)
    facts = describe(desc, program)
    check_parameters_file(desc, params)
    return dict(facts, format="legacy"), _param_count(desc)


def from_inference_model(folder):
    """{input, output, output_op, num_classes, dtype, mean, std, input_shape, files, format}."""
    model, params, deploy, fmt = export_files(folder)
    program, count = _program_facts(model, params, fmt)
    facts = dict(program, mean=None, std=None, input_shape=None, params=count,
                 files=[_file_facts(model, "inference-model"), _file_facts(params, "inference-params")])
    if os.path.isfile(deploy):
        name = os.path.basename(deploy)
        d = _read_yaml(deploy, name).get("Deploy") or {}
        if not isinstance(d, dict):
            raise ConverterError(f"{deploy}: Deploy must be a mapping")
        facts["mean"], facts["std"] = _normalize(d.get("transforms"), deploy)
        shape = d.get("input_shape")
        if isinstance(shape, list) and len(shape) == 4 and all(type(v) is int and v > 0 for v in shape[2:]):
            facts["input_shape"] = shape[2:]
        op = d.get("output_op")
        if op is not None and op != program["output_op"]:
            raise ConverterError(f"{deploy}: output_op {op!r}, but the program's output is {program['output_op']}")
        facts["files"].append(_file_facts(deploy, "deploy-config"))
    return facts


def _param_count(desc):
    import math

    block = desc.blocks[0]
    return sum(math.prod(v.type.lod_tensor.tensor.dims) for v in block.vars
               if v.persistable and v.type.HasField("lod_tensor") and v.name not in ("feed", "fetch")
               and all(d > 0 for d in v.type.lod_tensor.tensor.dims))


def _merged(path, depth=0, seen=()):
    """A training config with its _base_ files merged in (the file's own keys
    win, mappings merge recursively), as PaddleSeg reads it. Bases are local
    paths, relative to the file; a URL is refused, never fetched."""
    if depth > MAX_BASES or os.path.abspath(path) in seen:
        raise ConverterError(f"{path}: _base_ files nest too deep or in a circle")
    raw = _read_yaml(path, "training config")
    base = raw.pop("_base_", None)
    if base is None:
        return raw
    if not isinstance(base, str) or "://" in base:
        raise ConverterError(f"{path}: _base_ {str(base)[:80]!r} is not a local file (bases are never fetched)")
    parent = _merged(os.path.join(os.path.dirname(path), base), depth + 1, seen + (os.path.abspath(path),))
    return _merge(parent, raw)


def _merge(base, over):
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def from_training_config(path):
    """{model, backbone, num_classes, mean, std, size [H, W]} of a PaddleSeg training YAML."""
    from converter.family import BACKBONES

    cfg = _merged(path)
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    backbone = (model.get("backbone") or {}).get("type") if isinstance(model.get("backbone"), dict) else None
    name = str(backbone).lower() if backbone else None
    classes = model.get("num_classes") or ((cfg.get("train_dataset") or {}).get("num_classes")
                                           if isinstance(cfg.get("train_dataset"), dict) else None)
    facts = {"model": model.get("type"), "backbone": name if name in BACKBONES else None, "backbone_type": backbone,
             "num_classes": classes if type(classes) is int else None, "mean": None, "std": None, "size": None}
    val = cfg.get("val_dataset") if isinstance(cfg.get("val_dataset"), dict) else {}
    train = cfg.get("train_dataset") if isinstance(cfg.get("train_dataset"), dict) else {}
    val_t, train_t = (d.get("transforms") or [] for d in (val, train))
    if not isinstance(val_t, list) or not isinstance(train_t, list):
        raise ConverterError(f"{path}: a dataset's transforms must be a list")
    facts["mean"], facts["std"] = _normalize(val_t or train_t, path)
    for t in val_t + train_t:
        size = t.get("target_size") or t.get("crop_size") if isinstance(t, dict) else None
        if isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size):
            facts["size"] = [size[1], size[0]]   # PaddleSeg sizes are [W, H]
            break
    return facts
