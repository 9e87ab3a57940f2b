"""Hostile use, third pass: init's output, counts read from outside, crafted
programs, deeply nested YAML, and the messages that misled. Each case
failed before its fix; each has a control that passes."""
import os
import pickle
import shutil
import time

import numpy as np
import pytest

from tests.support import one_line_error, run_cli


def _checkpoint(path, backbone="hrnet_w18_small_v1", classes=19, extra=None, dtype=None):
    """A family member's state dict of random float32 values, pickled as paddle.save does (init reads shapes)."""
    from converter.family import state_shapes

    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(v).astype(np.float32) for k, v in state_shapes(backbone, classes).items()}
    state.update(extra or {})
    if dtype:
        key = next(iter(state))
        state[key] = state[key].astype(dtype)
    path.write_bytes(pickle.dumps(state, protocol=4))
    return path


@pytest.fixture(scope="module")
def export_argmax(paddleseg_exported):
    """A PaddleSeg-style export (jit.save, identity scale at the output) of the lite model, 7 classes."""
    return paddleseg_exported("argmax")


# --- init's output ------------------------------------------------------------------

def test_init_never_writes_over_its_inputs_or_a_non_file(tmp_path, export_argmax):
    ckpt = _checkpoint(tmp_path / "ck.pdparams")
    before = ckpt.read_bytes()
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"c{i}\n" for i in range(19)))
    cases = [
        (("--weights", str(ckpt), "--output", str(ckpt), "--force"), "one of init's inputs"),
        (("--weights", str(ckpt), "--labels", str(labels), "--output", str(labels), "--force"), "one of init's inputs"),
        (("--inference-model", str(export_argmax), "--output", str(export_argmax / "deploy.yaml"), "--force"),
         "one of init's inputs"),
        (("--weights", str(ckpt), "--output", str(tmp_path / "nodir") + "/"), "names a folder"),
    ]
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    cases.append((("--weights", str(ckpt), "--output", str(fifo), "--force"), "not a regular file"))
    deploy = (export_argmax / "deploy.yaml").read_bytes()
    for args, why in cases:
        one_line_error(run_cli("init", *args, timeout=120), 2, why)
    assert ckpt.read_bytes() == before and (export_argmax / "deploy.yaml").read_bytes() == deploy
    assert labels.read_text().startswith("c0\n") and os.path.exists(fifo) and not os.path.isfile(fifo)
    # an existing config is replaced only with --force; the control writes it
    config = tmp_path / "c.yaml"
    assert run_cli("init", "--weights", str(ckpt), "--output", str(config)).returncode == 0
    one_line_error(run_cli("init", "--weights", str(ckpt), "--output", str(config)), 2, "--force")
    assert run_cli("init", "--weights", str(ckpt), "--output", str(config), "--force").returncode == 0


# --- counts and messages ------------------------------------------------------------------

def test_a_billion_classes_in_a_training_yaml_is_refused_before_any_list_is_made(tmp_path, export_argmax):
    """A program that leaves its class count open takes the training YAML's: 10**9 made a list of 10**9 names."""
    import yaml

    from converter.runners.paddle_program import read_program

    folder = tmp_path / "open"
    shutil.copytree(export_argmax, folder)
    desc = read_program(str(folder / "model.pdmodel"))
    for var in desc.blocks[0].vars:   # the class scores' channel count, made dynamic
        dims = list(var.type.lod_tensor.tensor.dims) if var.type.HasField("lod_tensor") else []
        if len(dims) == 4 and dims[1] == 7:
            del var.type.lod_tensor.tensor.dims[:]
            var.type.lod_tensor.tensor.dims.extend([dims[0], -1, dims[2], dims[3]])
    (folder / "model.pdmodel").write_bytes(desc.SerializeToString())
    train = tmp_path / "train.yml"
    train.write_text(yaml.safe_dump({"model": {"type": "OCRNet", "num_classes": 10 ** 9}}))
    start = time.time()
    one_line_error(run_cli("init", "--inference-model", str(folder), "--paddleseg-config", str(train), "--output",
                           str(tmp_path / "c.yaml"), timeout=120), 2, "1000000000 classes", "1 to 255")
    assert time.time() - start < 60
    train.write_text(yaml.safe_dump({"model": {"type": "OCRNet", "num_classes": 7}}))   # the control
    assert run_cli("init", "--inference-model", str(folder), "--paddleseg-config", str(train), "--output",
                   str(tmp_path / "c.yaml")).returncode == 0


def test_messages_name_the_nearest_member_and_what_export_would_refuse(tmp_path):
    extra = _checkpoint(tmp_path / "extra.pdparams", extra={"backbone.stray.weight": np.zeros(3, np.float32)})
    line = one_line_error(run_cli("init", "--weights", str(extra), "--output", str(tmp_path / "c.yaml")), 6,
                          "nearest member OCRNet-hrnet_w18_small_v1 with 19 classes", "backbone.stray.weight")
    assert "lacks" not in line   # it lacks nothing of its nearest member (it was counted against W48)
    for dtype in (np.float64, np.int8):
        one_line_error(run_cli("init", "--weights", str(_checkpoint(tmp_path / "d.pdparams", dtype=dtype)),
                               "--output", str(tmp_path / "c.yaml")), 6, "not float32", np.dtype(dtype).name)
    bom = tmp_path / "labels.txt"
    bom.write_bytes("\ufeff".encode() + "".join(f"c{i}\n" for i in range(19)).encode())
    ckpt = _checkpoint(tmp_path / "ck.pdparams")
    assert run_cli("init", "--weights", str(ckpt), "--labels", str(bom), "--output", str(tmp_path / "b.yaml")
                   ).returncode == 0
    assert "name: c0" in (tmp_path / "b.yaml").read_text() and "\ufeff" not in (tmp_path / "b.yaml").read_text()


# --- crafted programs -------------------------------------------------------------------

def _ops(desc, kind):
    return [op for op in desc.blocks[0].ops if op.type == kind]


def _drop_slot(op, slot, side="inputs"):
    keep = [v for v in getattr(op, side) if v.parameter != slot]
    del getattr(op, side)[:]
    getattr(op, side).extend(keep)


def _drop_attr(op, name):
    keep = [a for a in op.attrs if a.name != name]
    del op.attrs[:]
    op.attrs.extend(keep)


def _take_spare_names(desc):
    from paddle.base.proto import framework_pb2
    for name in ("argmax_0.tmp_0", "class_map", "class_map_0", "class_map_1"):
        var = desc.blocks[0].vars.add(name=name)
        var.type.type = framework_pb2.VarType.LOD_TENSOR


MUTATIONS = {
    "feed without Out": lambda d: _drop_slot(_ops(d, "feed")[0], "Out", "outputs"),
    "fetch without X": lambda d: _drop_slot(_ops(d, "fetch")[0], "X"),
    "arg_max without X": lambda d: _drop_slot(_ops(d, "arg_max")[0], "X"),
    "arg_max without axis": lambda d: _drop_attr(_ops(d, "arg_max")[0], "axis"),
    "identity scale without X": lambda d: _drop_slot(_ops(d, "scale")[-1], "X"),
}


def test_a_malformed_op_in_a_program_is_one_converter_error(export_argmax):
    """IndexError, AttributeError and StopIteration came out of describe() for these."""
    from converter.errors import ConverterError
    from converter.runners.paddle_program import describe, read_program

    where = str(export_argmax / "model.pdmodel")
    assert describe(read_program(where), where)["output_op"] == "argmax"   # the control
    for name, mutate in MUTATIONS.items():
        desc = read_program(where)
        mutate(desc)
        with pytest.raises(ConverterError) as err:
            describe(desc, where)
        assert where in str(err.value) and "\n" not in str(err.value), name
    # every spare output name taken: another is found (it was StopIteration)
    desc = read_program(where)
    _take_spare_names(desc)
    free = describe(desc, where)["free_name"]
    assert free not in {v.name for v in desc.blocks[0].vars}


def test_init_on_a_crafted_program_is_one_line(export_argmax, tmp_path):
    from converter.runners.paddle_program import read_program

    folder = tmp_path / "crafted"
    shutil.copytree(export_argmax, folder)
    desc = read_program(str(folder / "model.pdmodel"))
    MUTATIONS["arg_max without axis"](desc)
    (folder / "model.pdmodel").write_bytes(desc.SerializeToString())
    one_line_error(run_cli("init", "--inference-model", str(folder), "--output", str(tmp_path / "c.yaml")), 2,
                   "argmax over no axis")


# --- nesting --------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["[" * 50000, "{a: " * 20000], ids=["brackets", "mappings"])
def test_deeply_nested_yaml_is_one_line_everywhere(tmp_path, export_argmax, text):
    """RecursionError tracebacks, from under 1 MiB, in --config, deploy.yaml and --paddleseg-config."""
    deep = tmp_path / "deep.yaml"
    deep.write_text(text + "\n")
    one_line_error(run_cli("fetch", "--config", str(deep), "--output", str(tmp_path / "o")), 3, "nested deeper")
    ckpt = _checkpoint(tmp_path / "ck.pdparams")
    one_line_error(run_cli("init", "--weights", str(ckpt), "--paddleseg-config", str(deep), "--output",
                           str(tmp_path / "c.yaml")), 2, "nested deeper")
    folder = tmp_path / "m"
    shutil.copytree(export_argmax, folder)
    shutil.copy(deep, folder / "deploy.yaml")
    one_line_error(run_cli("init", "--inference-model", str(folder), "--output", str(tmp_path / "c.yaml")), 2,
                   "nested deeper")
