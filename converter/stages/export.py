"""export stage: our OCRNet -> Paddle inference model in the release-2.3 format.

Writes model.pdmodel, model.pdiparams (+ .pdiparams.info, as paddle.jit.save
does), deploy.yaml, and export.json (what was exported, from which weights).
"""
import os
import time

from converter.config import package_path
from converter.errors import ConverterError, StageError
from converter.layout import STAGES, Workdir
from converter.records import StageRecord, write_record
from converter.stages import StageResult
from converter.util.fsutil import describe_files, staging_dir
from converter.util.log import info

def deploy_yaml(config):
    """Release-2.3 deploy.yaml: PaddleSeg's Normalize works on v / 255 with
    mean and std, default 0.5 each. The config's (v - mean) / scale is that
    with mean/255 and scale/255; when both are the default (as for this
    model's Cityscapes val transforms) the transform is written bare, as
    PaddleSeg's export writes it."""
    mean = [round(v / 255, 6) for v in config.mean]
    std = [round(v / 255, 6) for v in config.scale]
    lines = ["Deploy:", "  model: model.pdmodel", "  params: model.pdiparams", "  transforms:",
             "  - type: Normalize"]
    if mean != [0.5] * 3 or std != [0.5] * 3:
        lines += [f"    mean: {mean}", f"    std: {std}"]
    return "\n".join(lines) + "\n"
MODEL_FILES = ("model.pdmodel", "model.pdiparams", "model.pdiparams.info", "deploy.yaml")


def build_weighted_model(config, choice):
    """Our model with the chosen weights loaded, in eval mode."""
    from converter.family import state_shapes
    from converter.weights.checkpoint import load_state, match_state_dict, read_checkpoint

    state = None
    if choice.kind == "pretrained":
        # Read and check the file before paddle is even imported: a hostile
        # checkpoint, or one of another architecture, is refused in a
        # fraction of a second and small memory.
        info(f"export: reading checkpoint {choice.path}")
        state = read_checkpoint(choice.path, choice.sha384)
        match_state_dict(state_shapes(config.backbone, config.num_classes), state, config.architecture)
    from converter.data.images import input_contract
    from converter.model import build_model
    from converter.weights.synthetic import cached_synthetic_state_dict

    model = build_model(config.num_classes, backbone=config.backbone)
    if state is None:
        seed = choice.provenance["seed"]
        info(f"export: synthetic weights (seed {seed}; BatchNorm recalibration on the sample images, "
             f"cached in {choice.cache_dir or 'no cache'})...")
        _, hit = cached_synthetic_state_dict(model, seed, input_contract(config, "original"), choice.cache_dir,
                                             log=info)
        info("export: synthetic weights " + ("taken from the cache (verified)" if hit else "computed"))
    else:
        extra = load_state(model, state, log=info, what=config.architecture)
        choice.provenance["ignored_keys"] = len(extra)
    model.eval()
    return model


def normalize_program(path):
    """Rewrite model.pdmodel in place, removing two artefacts of paddle.jit.save.

    1. The identity `scale` op (scale 1, bias 0) that jit.save appends to every
       output, named `save_infer_model/scale_N.tmp_0`. Dropping it makes the
       output the argmax's own tensor, `argmax_0.tmp_0`, which is the name the
       model card promises and which paddle2onnx and OpenVINO carry through.
    Returns the names of the program's fetch targets.
    2. `op_callstack` attributes: Python stack traces with absolute file paths,
       which would make the file differ between two checkouts.
    """
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.ProgramDesc()
    with open(path, "rb") as fh:
        desc.ParseFromString(fh.read())
    block = desc.blocks[0]
    renames, drop = {}, []
    for idx, op in enumerate(block.ops):
        outs = [a for o in op.outputs for a in o.arguments]
        if op.type == "scale" and len(outs) == 1 and outs[0].startswith("save_infer_model/scale_"):
            attrs = {a.name: a for a in op.attrs}
            if attrs["scale"].f == 1.0 and attrs["bias"].f == 0.0:
                renames[outs[0]] = [a for i in op.inputs if i.parameter == "X" for a in i.arguments][0]
                drop.append(idx)
    for idx in reversed(drop):
        del block.ops[idx]
    for op in block.ops:
        if op.type == "fetch":
            for inp in op.inputs:
                inp.arguments[:] = [renames.get(a, a) for a in inp.arguments]
    keep = [v for v in block.vars if v.name not in renames]
    del block.vars[:]
    block.vars.extend(keep)
    for blk in desc.blocks:
        for op in blk.ops:
            attrs = [a for a in op.attrs if a.name != "op_callstack"]
            del op.attrs[:]
            op.attrs.extend(attrs)
    with open(path, "wb") as fh:
        fh.write(desc.SerializeToString(deterministic=True))
    return [a for op in block.ops if op.type == "fetch" for i in op.inputs for a in i.arguments]


def normalize_params_info(path):
    """model.pdiparams.info is a pickled dict whose key order follows a hash
    set, so it differs between runs; rewrite it with sorted keys. The file was
    written by paddle in this process a moment ago, and is read back with the
    restricted unpickler all the same."""
    import pickle

    from converter.weights.safe_pickle import loads

    with open(path, "rb") as fh:
        info_dict = loads(fh.read())
    with open(path, "wb") as fh:
        pickle.dump({k: info_dict[k] for k in sorted(info_dict)}, fh, protocol=2)


def save_inference_model(config, model, folder, without_argmax=False):
    import paddle
    from paddle.static import InputSpec

    from converter.model import InferenceWrapper

    wrapper = InferenceWrapper(model, without_argmax)
    wrapper.eval()
    spec = [InputSpec([None, 3, None, None], "float32", config.original_input.name)]
    paddle.jit.save(wrapper, os.path.join(folder, "model"), input_spec=spec)
    outputs = normalize_program(os.path.join(folder, "model.pdmodel"))
    if not without_argmax and outputs != [config.original_output.name]:
        raise StageError(f"the exported program's output is {outputs}, the config says "
                         f"{config.original_output.name!r}")
    info_path = os.path.join(folder, "model.pdiparams.info")
    if os.path.exists(info_path):
        normalize_params_info(info_path)
    with open(os.path.join(folder, "deploy.yaml"), "w") as fh:
        fh.write(deploy_yaml(config))


def export_key(config, choice, without_argmax):
    """What an export's bytes depend on: the weights, our model and calibration
    code and images, the paddle version, and the argmax switch."""
    import glob

    from converter.util.incremental import source_digest, stage_key, tool_versions

    sources = (glob.glob(package_path("model", "*.py")) + glob.glob(package_path("samples", "*.jpg"))
               + [package_path(*p.split("/")) for p in ("stages/export.py", "weights/synthetic.py",
                                                         "weights/checkpoint.py", "weights/safe_pickle.py",
                                                         "weights/pickle_numpy.py",
                                                         "data/images.py")])
    weights = {k: v for k, v in choice.provenance.items() if k in ("kind", "seed", "sha384")}
    inputs = [choice.path] if choice.kind == "pretrained" and not choice.provenance.get("verified") else []
    interface = {"input": config.original_input.name, "output": config.original_output.name,
                 "mean": list(config.mean), "scale": list(config.scale), "classes": config.num_classes,
                 "backbone": config.backbone}
    return stage_key({"stage": "export", "weights": weights, "without_argmax": without_argmax, "interface": interface,
                      "sources": source_digest(sources), "tools": tool_versions("paddlepaddle")}, inputs)


def run_export(config, output_dir, choice, without_argmax=False, logits_output=None, force=False):
    """Export with already-resolved weights (see weights.resolve_weights).

    logits_output: also write the --without-argmax variant of the same
    network there (a diagnostic; parity gets the logits from the argmax model
    itself); loading the weights once serves both. Skipped when every output
    is up to date.
    """
    from converter.records import current_record

    start = time.perf_counter()
    for folder in (output_dir, logits_output):
        if folder and os.path.lexists(folder) and not os.path.isdir(folder):
            raise ConverterError(f"--output {folder} exists and is not a folder")
    targets = [(output_dir, without_argmax)] + ([(logits_output, True)] if logits_output else [])
    keys = {d: export_key(config, choice, wa) for d, wa in targets}

    def current(folder):
        return current_record(folder, "export", keys[folder])
    record = None if force else current(output_dir)
    if record and all(current(d) for d, _ in targets[1:]):
        info("export: up to date (same weights, code and parameters); skipped. Use --force to redo.")
        return StageResult("export", [os.path.join(output_dir, f) for f in record.files], record, skipped=True)
    model = build_weighted_model(config, choice)
    if logits_output:
        run_export_model(config, model, logits_output, choice=choice, without_argmax=True, start=start,
                         key=keys[logits_output])
    return run_export_model(config, model, output_dir, choice=choice, without_argmax=without_argmax, start=start,
                            key=keys[output_dir])


def run_export_model(config, model, output_dir, *, choice, without_argmax, start, key=None):
    with staging_dir(output_dir, record=STAGES["export"].record) as tmp:
        what = "the inference model" + (" (logits)" if without_argmax else "")
        info(f"export: tracing and saving {what} to {output_dir}...")
        save_inference_model(config, model, tmp, without_argmax)
        files = describe_files(tmp, [f for f in MODEL_FILES if os.path.exists(os.path.join(tmp, f))])
    record = StageRecord(
        "export", files, key, choice.provenance,
        input={"name": config.original_input.name, "shape": [-1, 3, -1, -1], "dtype": "float32",
               "color": config.original_input.color, "normalisation": config.normalisation_text()},
        output=({"name": "logits", "shape": [-1, config.num_classes, -1, -1], "dtype": "float32"}
                if without_argmax else {"name": config.original_output.name, "shape": [-1, -1, -1],
                                        "dtype": "int32"}),
        seconds=round(time.perf_counter() - start, 1),
        params={"without_argmax": without_argmax, "num_classes": config.num_classes,
                "architecture": {"arch": config.arch, "backbone": config.backbone}})
    write_record(output_dir, record)
    return StageResult("export", [os.path.join(output_dir, f) for f in files], record, seconds=record.seconds)


def run(config, workdir, choice, *, without_argmax=False, logits_output=None, force=False, output=None):
    """The export stage into workdir/paddle (or output)."""
    return run_export(config, output or Workdir.of(workdir).paddle, choice, without_argmax,
                      logits_output, force)
