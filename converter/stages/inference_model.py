"""The export stage of a user's Paddle inference model (config model.arch paddle-inference).

A PaddleSeg `export.py` output (model.pdmodel, model.pdiparams, deploy.yaml)
of any architecture stands in for our own export: its files are verified
against the config's size and sha384 (from `init`), read (the program parsed
in Python, described by runners.paddle_program), and written into
WORKDIR/paddle with the export stage's record and their provenance, so that
every later stage reads them as it reads our export.

One change is made, and recorded: a program whose output is softmax
probabilities or raw logits gets an arg_max over the classes appended as its
output, so that every converted model has the interface of the others (the
class map), and parity compares the class scores the user's program
computes, fetched from it as they are.
"""
import os
import shutil
import time

from converter.errors import ChecksumError, ConverterError, StageError
from converter.layout import STAGES, Workdir
from converter.records import StageRecord, write_record
from converter.stages import StageResult, up_to_date
from converter.util.fsutil import describe_files, staging_dir
from converter.util.log import info

ROLE_FILES = {"inference-model": "model.pdmodel", "inference-params": "model.pdiparams",
              "deploy-config": "deploy.yaml"}


def source_files(config, folder=None):
    """{role: path} of the user's files: in folder (--inference-model), else
    where the config's file:// sources say."""
    from converter.stages.fetch import local_source

    if folder is not None and not os.path.isdir(folder):
        raise ConverterError(f"--inference-model {folder}: not a folder")
    out = {}
    for spec in config.files:
        if spec.role not in ROLE_FILES:
            continue
        path = os.path.join(folder, spec.name) if folder is not None else local_source(spec)
        if path is None:
            raise ConverterError(f"{config.path}: files: {spec.name} has no local source; pass --inference-model DIR")
        if not os.path.isfile(path):
            raise ConverterError(f"{spec.name} not found: {path}")
        out[spec.role] = path
    return out


def _verify(config, files, allow_unverified):
    """{role: {path, sha384, verified}}; a file that is not the one the
    config names is an error unless allow_unverified."""
    from converter.stages.fetch import file_sha384, verify

    out = {}
    for role, path in files.items():
        spec = config.file(role)
        try:
            verify(path, spec, delete_bad=False)
            out[role] = {"path": os.path.abspath(path), "sha384": spec.sha384, "verified": True}
        except ChecksumError as exc:
            if not allow_unverified:
                raise ChecksumError(f"{path}: {exc} (is it the model `init` wrote this config for? pass "
                                    "--allow-unverified to convert it anyway)") from None
            info(f"warning: {exc}; converting it anyway because of --allow-unverified")
            out[role] = {"path": os.path.abspath(path), "sha384": file_sha384(path), "verified": False}
    return out


def _check_interface(config, program, where):
    """The program is the one the config was written for."""
    if program["output_op"] != config.output_op:
        raise StageError(f"{where}: its output is {program['output_op']}, the config says {config.output_op} "
                         "(model.output_op): run init again")
    if program["classes"] not in (None, config.num_classes):
        raise StageError(f"{where}: {program['classes']} classes, the config {config.num_classes} (model.num_classes)")
    if program["input"] != config.original_input.name:
        raise StageError(f"{where}: its input is {program['input']!r}, the config says "
                         f"{config.original_input.name!r} (original.input.name)")
    if program["output_op"] == "argmax" and program["output"] != config.original_output.name:
        raise StageError(f"{where}: its output is {program['output']!r}, the config says "
                         f"{config.original_output.name!r} (original.output.name)")


def _program(config, path, params_path, where):
    """The program to write (None: the copy as it is), and what was changed in it;
    `where` names the user's file in messages."""
    from converter.runners.paddle_program import check_parameters_file, describe, read_program, with_argmax

    desc = read_program(path)
    program = describe(desc, where)
    check_parameters_file(desc, params_path)
    _check_interface(config, program, where)
    if program["output_op"] == "argmax":
        return None, "none"
    desc = with_argmax(desc, program["logits"], config.original_output.name)
    return desc.SerializeToString(deterministic=True), f"arg_max over axis 1 of {program['logits']} appended"


def _pir_program(config, path, params_path, where):
    """As _program, for a Paddle 3 PIR program (model.json): the argmax is
    appended in the JSON, fetched under the program's own output name."""
    import json

    from converter.runners.pir_program import check_parameters_file, describe_pir, read_pir, with_class_map_output

    graph = read_pir(path)
    program = describe_pir(graph, where)
    check_parameters_file(graph, params_path)
    _check_interface(config, dict(program, output=config.original_output.name if program["output_op"] != "argmax"
                                  else program["output"]), where)
    changed, change = with_class_map_output(graph, program)
    return (None if changed is None else json.dumps(changed, separators=(",", ":")).encode()), change


def _staged_name(role, source):
    """Its name in WORKDIR/paddle: model.pdmodel or model.json (by the format), model.pdiparams, deploy.yaml."""
    if role == "inference-model" and source.endswith(".json"):
        return "model.json"
    return STAGED[role]


STAGED = {"inference-model": "model.pdmodel", "inference-params": "model.pdiparams", "deploy-config": "deploy.yaml"}


def _stage_copies(config, files, provenance, tmp):
    """Copy the user's files into tmp, check the copies' sha384 against what
    was verified (a file swapped between the check and the copy is caught:
    only the bytes checked are used), then append the argmax to the copied
    program if the config asks for one. Returns what was changed."""
    from converter.stages.fetch import file_sha384

    for role in STAGED:
        if role not in files:
            continue
        copy = os.path.join(tmp, _staged_name(role, files[role]))
        shutil.copyfile(files[role], copy)
        if file_sha384(copy) != provenance[role]["sha384"]:
            raise StageError(f"{files[role]}: changed while it was being copied (its bytes are not the ones "
                             "just verified); run again")
    name = _staged_name("inference-model", files["inference-model"])
    reader = _pir_program if name == "model.json" else _program
    program, change = reader(config, os.path.join(tmp, name), os.path.join(tmp, "model.pdiparams"),
                             files["inference-model"])
    info(f"export: taking the inference model {os.path.dirname(files['inference-model'])}"
         + (f" ({change})" if program else ""))
    if program is not None:
        os.unlink(os.path.join(tmp, name))
        with open(os.path.join(tmp, name), "wb") as fh:
            fh.write(program)
    return change


def run(config, workdir, *, folder=None, allow_unverified=False, force=False):
    from converter.util.incremental import stage_key, tool_versions

    start = time.perf_counter()
    files = source_files(config, folder)
    provenance = _verify(config, files, allow_unverified)
    out_dir = Workdir.of(workdir).paddle
    key = stage_key({"stage": "export", "arch": config.arch, "output_op": config.output_op,
                     "interface": [config.original_input.name, config.original_output.name, config.num_classes],
                     "tools": tool_versions("paddlepaddle")}, [files[r] for r in sorted(files)])
    skipped = up_to_date("export", out_dir, key, force, "same inference model")
    if skipped:
        return skipped
    with staging_dir(out_dir, record=STAGES["export"].record) as tmp:
        change = _stage_copies(config, files, provenance, tmp)
        written = describe_files(tmp, sorted(os.listdir(tmp)))
    weights = {"kind": "inference-model", "files": provenance, "output_op": config.output_op, "changed": change,
               "verified": all(p["verified"] for p in provenance.values())}
    record = StageRecord(
        "export", written, key, weights,
        input={"name": config.original_input.name, "shape": [-1, 3, -1, -1], "dtype": "float32",
               "color": config.original_input.color, "normalisation": config.normalisation_text()},
        output={"name": config.original_output.name, "shape": [-1, -1, -1], "dtype": config.original_output.dtype},
        seconds=round(time.perf_counter() - start, 1),
        params={"without_argmax": False, "num_classes": config.num_classes,
                "architecture": {"arch": config.arch, "output_op": config.output_op}})
    write_record(out_dir, record)
    return StageResult("export", [os.path.join(out_dir, f) for f in written], record, seconds=record.seconds)
