"""Paddle 3 PIR exports (model.json / inference.json): init, convert, quantize,
diagnose and package through the Paddle 3 toolchain (.venv/paddle3), and
what it refuses.

The exports are made here as users make them (tests/paddle3_export.py:
paddle.jit.save under Paddle 3.3.1): a small network that is not an OCRNet
in PaddleSeg's layout with a softmax output (the argmax is appended), the
same in PaddleX's layout with an argmax that keeps the class axis. The lite
OCRNet's PIR export is in the slow tier (tests/test_paddle3_ocrnet.py).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.support import ROOT, SAMPLES, one_line_error, run_cli

TOOLCHAIN = os.path.join(sys.prefix, "paddle3", "bin", "python")
MAKER = os.path.join(ROOT, "tests", "paddle3_export.py")
SHAPE = "1,3,256,512"


def make_export(kind, folder, *args):
    """A PIR export made by the toolchain's interpreter (tests/paddle3_export.py)."""
    folder.mkdir(parents=True)
    proc = subprocess.run([TOOLCHAIN, "-I", MAKER, kind, str(folder), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def tiny_softmax(tmp_path_factory):
    return make_export("tiny", tmp_path_factory.mktemp("p3") / "tiny-softmax", "paddleseg", "softmax")


@pytest.fixture(scope="module")
def tiny_build(tiny_softmax, tmp_path_factory):
    """init + convert of the softmax export: (config, workdir, convert's process)."""
    root = tmp_path_factory.mktemp("p3build")
    config, work = root / "tiny.yaml", root / "work"
    proc = run_cli("init", "--inference-model", str(tiny_softmax), "--output", str(config), "--input-shape", SHAPE)
    assert proc.returncode == 0, proc.stderr
    return config, work, run_cli("convert", "--config", str(config), "--workdir", str(work))


@pytest.mark.slow   # the default tier's 10 minutes: tests/test_paddle3.py keeps the rest
def test_a_pir_export_of_another_architecture_converts_to_passed(tiny_softmax, tiny_build):
    config, work, proc = tiny_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("PASSED: 4 gated backend(s)")
    export = json.loads((work / "paddle" / "export.json").read_text())
    assert sorted(export["files"]) == ["deploy.yaml", "model.json", "model.pdiparams"]
    assert export["weights"]["changed"] == "argmax over axis 1 of the class scores appended"
    assert export["weights"]["output_op"] == "softmax"
    # the user's files are untouched; the argmax is in the copy only
    assert "1.argmax" not in (tiny_softmax / "model.json").read_text()
    assert '"1.argmax"' in (work / "paddle" / "model.json").read_text()
    manifest = json.loads((work / "MANIFEST.json").read_text())
    assert manifest["stages"]["export"]["format"] == "pir"
    assert manifest["stages"]["onnx"]["route"] == "PIR model.json -> paddle2onnx 2.x (Paddle 3 toolchain)"
    assert manifest["stages"]["openvino"]["source"] == "onnx"
    toolchain = manifest["versions"]["paddle3_toolchain"]
    assert (toolchain["paddlepaddle"], toolchain["paddle2onnx"]) == ("3.3.1", "2.1.0")
    card = (work / "README.md").read_text()
    assert "Paddle 3 toolchain" in card and "paddlepaddle 3.3.1, paddle2onnx 2.1.0" in card
    report = json.loads((work / "parity" / "report.json").read_text())
    assert report["passed"] is True
    # the report names the Paddle that ran the reference, not only this interpreter's
    assert report["system"]["paddle3_toolchain"]["paddlepaddle"] == "3.3.1"
    assert "Paddle 3 toolchain (it ran the original PIR program, the reference): paddlepaddle 3.3.1" in (
        work / "parity" / "report.md").read_text()


@pytest.mark.slow   # the default tier's 10 minutes: tests/test_paddle3.py keeps the rest
def test_the_reference_is_paddle_3_running_the_users_program(tiny_build):
    """Paddle 3 Inference's class map equals the argmax of the program's own
    softmax output, fetched from the same run (and the ONNX model agrees)."""
    from converter.data.images import load_rgb, prepare, resize_rgb
    from converter.config import load_config
    from converter.data.images import input_contract
    from converter.runners import make_runner

    config_path, work, _ = tiny_build
    config = load_config(str(config_path))
    rgb = resize_rgb(load_rgb(os.path.join(SAMPLES, "street_1.jpg")), 512, 256)
    runner = make_runner("paddle", str(work / "paddle"), threads=2, logits=True)
    assert runner.info["paddle"] == "3.3.1" and runner.info["format"] == "pir"
    out = runner.infer(prepare(rgb, input_contract(config, "original")))
    class_map = out[config.original_output.name]
    assert class_map.shape == (1, 256, 512) and class_map.dtype == np.int32
    assert out["logits"].shape == (1, 7, 256, 512)
    np.testing.assert_allclose(out["logits"].sum(axis=1), 1.0, atol=1e-5)   # softmax probabilities
    assert (class_map == out["logits"].argmax(axis=1)).all()
    onnx = make_runner("onnxruntime", str(work / "onnx" / "tiny.onnx"), threads=2)
    converted = onnx.infer(prepare(rgb, input_contract(config, "converted")))[config.converted_output.name]
    assert (converted == class_map).mean() > 0.999


@pytest.mark.slow   # the default tier's 10 minutes: tests/test_paddle3.py keeps the rest
def test_quantize_diagnose_and_package_run_on_a_pir_build(tiny_build, tmp_path):
    config, work, _ = tiny_build
    done = {}
    for command in ("quantize", "model-api", "parity", "manifest"):   # as `make quantize`
        done[command] = run_cli(command, "--config", str(config), "--workdir", str(work))
        assert done[command].returncode == 0, done[command].stderr[-3000:]
    verdict = done["parity"].stdout.strip().splitlines()[-1]
    assert verdict.startswith("PASSED: 5 gated backend(s)") and "openvino-int8-default" in verdict
    proc = run_cli("diagnose", "--config", str(config), "--workdir", str(work), "--backend", "openvino-fp32-f32",
                   "--output", str(tmp_path / "diag"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no tensor over the budget" in proc.stdout.splitlines()[-1]
    report = json.loads(next((tmp_path / "diag").rglob("diagnose.json")).read_text())
    compared = [layer["tensor"] for layer in report["layers"]]
    assert len(compared) >= 8 and all(t.startswith("p2o.pd_op.") for t in compared)
    proc = run_cli("package", "--config", str(config), "--workdir", str(work), "--output", str(tmp_path / "dist"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    archive = next((tmp_path / "dist").glob("*.tar.gz"))
    proc = run_cli("package", "--verify", str(archive))
    assert proc.returncode == 0 and proc.stdout.startswith("OK"), proc.stderr


@pytest.mark.slow   # the default tier's 10 minutes: tests/test_paddle3.py keeps the rest
def test_a_paddlex_layout_with_a_kept_class_axis_is_read_and_converted(tmp_path):
    folder = make_export("tiny", tmp_path / "px", "paddlex", "argmax")
    assert sorted(os.listdir(folder)) == ["inference.json", "inference.pdiparams", "inference.yml"]
    config, work = tmp_path / "px.yaml", tmp_path / "work"
    proc = run_cli("init", "--inference-model", str(folder), "--output", str(config), "--input-shape", SHAPE)
    assert proc.returncode == 0, proc.stderr
    for stage in ("export", "onnx", "openvino"):
        proc = run_cli(stage, "--config", str(config), "--workdir", str(work))
        assert proc.returncode == 0, proc.stderr[-3000:]
    export = json.loads((work / "paddle" / "export.json").read_text())
    assert export["weights"]["changed"] == "the argmax's kept class axis dropped"
    assert export["weights"]["files"]["deploy-config"]["path"].endswith("inference.yml")
    import onnx

    graph = onnx.load(str(work / "onnx" / "px.onnx")).graph
    dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 256, 512] and graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    # the same conversion again gives the same bytes
    first = (work / "onnx" / "px.onnx").read_bytes()
    proc = run_cli("onnx", "--config", str(config), "--workdir", str(work), "--force")
    assert proc.returncode == 0 and (work / "onnx" / "px.onnx").read_bytes() == first


@pytest.mark.slow   # the default tier's 10 minutes: tests/test_paddle3.py keeps the rest
def test_what_a_pir_build_cannot_do_is_one_line(tiny_build, tmp_path):
    config, work, _ = tiny_build
    one_line_error(run_cli("openvino", "--config", str(config), "--workdir", str(work), "--read-from", "paddle"),
                   8, "OpenVINO reads no Paddle 3 PIR program", "--read-from onnx")
    proc = run_cli("onnx", "--config", str(config), "--workdir", str(tmp_path / "w"), "--force",
                   env={"OCRNET_PADDLE3_PYTHON": str(tmp_path / "no-python")})
    assert proc.returncode != 0
    # the export stage copies without the toolchain; the ONNX stage needs it
    proc = run_cli("convert", "--config", str(config), "--workdir", str(tmp_path / "w"),
                   env={"OCRNET_PADDLE3_PYTHON": str(tmp_path / "no-python")})
    line = one_line_error(proc, 2, "Paddle 3 toolchain", "make setup", "OCRNET_PADDLE3_PYTHON")
    assert "no-python" in line
    assert not (tmp_path / "w" / "onnx").exists()


# --- the PIR reader, on hostile programs (in-process: no Paddle involved) -----------------------

def _program(folder):
    from converter.runners.pir_program import read_pir

    return read_pir(str(folder / "model.json"))


def _mutated(program, edit):
    import copy

    from converter.runners.pir_program import ops

    out = copy.deepcopy(program)
    edit(ops(out))
    return out


def _by_name(block, name):
    from converter.runners.pir_program import op_name

    return [op for op in block if op_name(op) == name]


def test_the_pir_reader_refuses_what_is_not_a_segmentation_program(tiny_softmax, tmp_path):
    from converter.errors import ConverterError, StageError
    from converter.runners.pir_program import describe_pir, read_pir, with_class_map_output

    program = _program(tiny_softmax)
    found = describe_pir(program, "m")   # the control: the export as made
    assert (found["input"], found["output"], found["output_op"], found["classes"]) == ("x", "fetch_name_0",
                                                                                      "softmax", 7)
    argmax, _ = with_class_map_output(program, found)
    assert describe_pir(argmax, "m")["output_op"] == "argmax"

    def full_axis(block):
        axis = [op for op in _by_name(block, "pd_op.full") if op["O"][0]["TT"]["D"][1] == [1]][-1]
        next(a for a in axis["A"] if a["N"] == "value")["AT"]["D"] = 2.0

    def many_classes(block):
        for op in _by_name(block, "pd_op.softmax"):
            op["O"][0]["TT"]["D"][1][1] = 1000

    cases = [
        (program, lambda b: b.append(dict(_by_name(b, "pd_op.fetch")[0])), "expected one output (pd_op.fetch), found 2"),
        (program, lambda b: b.append({"#": "1.while", "I": [], "O": []}), "control flow (pd_op.while)"),
        (program, lambda b: _by_name(b, "pd_op.fetch")[0].update(I=[{"%": 987654}]), "reads no value"),
        (program, lambda b: b.remove(_by_name(b, "pd_op.data")[0]), "expected one input (pd_op.data), found 0"),
        (program, many_classes, "1000 channels, more than the 255 classes"),
        (argmax, full_axis, "argmax over axis 2, not over the classes"),
    ]
    for source, edit, message in cases:
        with pytest.raises(ConverterError, match=message.replace("(", r"\(").replace(")", r"\)")):
            describe_pir(_mutated(source, edit), "m")
    for text, message in (("{", "invalid JSON"), ("[" * 100_000, "nests too deep"),
                          ('{"base_code": {"magic": "pdmodel"}, "program": {}}', "not a Paddle PIR program"),
                          ("[]", "not a Paddle PIR program")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(StageError, match=message):
            read_pir(str(tmp_path / "bad.json"))
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(StageError, match="not a regular file"):
        read_pir(str(tmp_path / "fifo.json"))


@pytest.mark.slow   # the default tier's 10 minutes: tests/test_paddle3.py keeps the rest
def test_init_refuses_a_pir_export_in_one_line(tiny_softmax, tmp_path):
    import shutil

    from converter.runners.pir_program import ops

    program = _program(tiny_softmax)
    ops(program).append({"#": "1.while", "I": [], "O": []})
    for name in ("model.pdiparams", "deploy.yaml"):
        shutil.copy(tiny_softmax / name, tmp_path / name)
    (tmp_path / "model.json").write_text(json.dumps(program))
    one_line_error(run_cli("init", "--inference-model", str(tmp_path), "--output", str(tmp_path / "c.yaml")), 2,
                   "control flow (pd_op.while)", "paddle2onnx 2.x")
    (tmp_path / "model.json").write_bytes((tiny_softmax / "model.json").read_bytes())
    with open(tmp_path / "model.pdiparams", "r+b") as fh:
        fh.truncate(1000)
    one_line_error(run_cli("init", "--inference-model", str(tmp_path), "--output", str(tmp_path / "c.yaml")), 8,
                   "truncated or foreign .pdiparams")
    assert not (tmp_path / "c.yaml").exists()


def test_an_ir_tap_on_a_tensor_with_two_names_answers_to_both(tmp_path):
    """paddle2onnx 2.x's tensors often carry two names in the IR; asking for
    both once returned only the second (quantize's error profile failed
    with a KeyError on a PIR build)."""
    import openvino as ov
    import openvino.opset13 as opset

    from converter.runners import make_runner

    x = opset.parameter([1, 3, 4, 4], ov.Type.f32, name="x")
    relu = opset.relu(x)
    relu.output(0).get_tensor().set_names({"p2o.pd_op.relu.0.0", "Relu.1"})
    negated = opset.negative(relu)
    ov.save_model(ov.Model([opset.result(negated)], [x]), str(tmp_path / "m.xml"))
    runner = make_runner("openvino", str(tmp_path / "m.xml"), threads=1, taps=["p2o.pd_op.relu.0.0", "Relu.1"])
    data = np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 3, 4, 4)
    out = runner.infer(data)
    for name in ("p2o.pd_op.relu.0.0", "Relu.1"):
        np.testing.assert_array_equal(out[name], np.maximum(data, 0))


def test_the_no_install_guard_holds_paddle2onnx_2s_polygraphy_back(tiny_softmax, tmp_path):
    """paddle2onnx 2.x's default optimiser sets POLYGRAPHY_AUTOINSTALL_DEPS=1
    itself and Polygraphy then runs `pip install` for what it misses: the
    project never uses it (the bridge passes no save_file), and the guard
    refuses the installs all the same."""
    proc = subprocess.run([TOOLCHAIN, "-I", os.path.join(ROOT, "tests", "paddle3_guard.py"), str(tiny_softmax),
                           str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    attempts = [s for s in seen["tried"] if " -m pip install" in s]
    assert attempts, seen   # it did try: otherwise this test proves nothing
    assert [s for s in seen["passed"] if "pip" in s] == [], seen   # and the guard stopped every one
    assert any(s in seen["passed"] for s in seen["tried"] if "pip" not in s)   # the control: others pass
    assert seen["installed"] == [] and (tmp_path / "m.onnx").is_file()


@pytest.mark.slow   # the default tier's 10 minutes: tests/test_paddle3.py keeps the rest
def test_sigterm_while_paddle_3_runs_takes_its_process_along(tiny_build, tmp_path):
    """The Paddle 3 reference runs in a child of the isolated interpreter: a
    SIGTERM to the run while that child computes is exit 143, one line, and
    no child left (nor a staging folder)."""
    import signal
    import time

    import psutil

    config, work, _ = tiny_build
    linked = tmp_path / "w"
    linked.mkdir()
    for name in ("paddle", "onnx", "openvino"):
        os.symlink(work / name, linked / name)
    proc = subprocess.Popen([sys.executable, "-m", "converter", "parity", "--config", str(config), "--workdir",
                             str(linked), "--images", SAMPLES, "--workers", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, bridges = time.time() + 120, []
    while not bridges and time.time() < deadline and proc.poll() is None:
        bridges = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "paddle3_bridge.py" in " ".join(p.cmdline()) and "serve" in p.cmdline()]
        time.sleep(0.2)
    assert bridges, "the Paddle 3 reference never started"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "error: terminated" and "Traceback" not in err
    time.sleep(1)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in bridges)
    assert sorted(os.listdir(linked)) in (["onnx", "openvino", "paddle"],
                                          [".ocrnet-convert.lock", "onnx", "openvino", "paddle"])


def test_mutated_pir_programs_are_read_or_refused_never_crash(tiny_softmax, tmp_path):
    """Four hundred seeded mutations of a real program (keys dropped, values
    replaced by other JSON types): every reader and editor of runners.pir_program
    either works or raises a ConverterError; before the guards, ids that were
    lists or dicts, attributes that were not objects and a fetch without an
    output raised TypeError, AttributeError, KeyError and IndexError."""
    import copy
    import random

    from converter.errors import ConverterError
    from converter.runners import pir_program as pp

    base = json.loads((tiny_softmax / "model.json").read_text())
    junk = [None, [], {}, "x", -1, 10 ** 20, 1.5, True, [1], {"%": [1]}, {"#": "1.argmax"}]
    places = []

    def walk(obj, path):
        for key, value in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
            places.append(path + (key,))
            if isinstance(value, (dict, list)):
                walk(value, path + (key,))
    walk(base, ())
    rng, outcomes = random.Random(0), {"read": 0, "refused": 0}
    for _ in range(400):
        program = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(places)
            try:
                parent = program
                for key in path[:-1]:
                    parent = parent[key]
                if isinstance(parent, dict) and rng.random() < 0.3:
                    parent.pop(path[-1], None)
                else:
                    parent[path[-1]] = rng.choice(junk)
            except (KeyError, IndexError, TypeError):
                pass   # an earlier mutation moved this place
        (tmp_path / "m.json").write_text(json.dumps(program))
        try:
            graph = pp.read_pir(str(tmp_path / "m.json"))
            found = pp.describe_pir(graph, "m")
            pp.with_class_map_output(graph, found)
            pp.with_fetches(graph, [found["logits"]], ["logits"])
            pp.with_static_input(graph, [1, 3, 64, 64])
            pp.activations(graph), pp.bias_adds(graph), pp.parameter_count(graph)
            outcomes["read"] += 1
        except ConverterError:
            outcomes["refused"] += 1
    assert outcomes["refused"] >= 20 and outcomes["read"] >= 200, outcomes


@pytest.mark.slow   # the default tier's 10 minutes: tests/test_paddle3.py keeps the rest
def test_a_head_like_pp_litesegs_converts_at_its_static_size_and_diagnose_reads_it(tmp_path):
    """paddle2onnx 2.x converts an adaptive pool only at a static input size:
    the dynamic export is one line naming the op (before: 'There are
    unsupported features.', which names nothing) and saying what to do. The
    static export converts at its size; init takes that size, and refuses
    another. diagnose leaves out the depthwise convolution OpenVINO folds its
    BatchNorm into (before: a false divergence there, rel. p99 0.03)."""
    import yaml

    dynamic = make_export("pooled", tmp_path / "dynamic", "paddleseg", "argmax")
    proc = run_cli("init", "--inference-model", str(dynamic), "--output", str(tmp_path / "d.yaml"),
                   "--input-shape", "1,3,128,256")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("convert", "--config", str(tmp_path / "d.yaml"), "--workdir", str(tmp_path / "dw"))
    one_line_error(proc, 8, "[OP: pd_op.pool2d] Adaptive only support static input shape",
                   "also with the program's input fixed to [1, 3, 128, 256]", "--input_shape 1 3 H W")
    static = make_export("pooled", tmp_path / "static", "paddleseg", "argmax", "128", "256")
    config, work = tmp_path / "s.yaml", tmp_path / "sw"
    one_line_error(run_cli("init", "--inference-model", str(static), "--output", str(config), "--input-shape",
                           SHAPE), 2, "exported at a static 128x256")
    proc = run_cli("init", "--inference-model", str(static), "--output", str(config))
    assert proc.returncode == 0 and "converted at 128x256" in proc.stdout, proc.stderr
    raw = yaml.safe_load(config.read_text())
    assert raw["converted"]["input"]["shape"] == [1, 3, 128, 256]
    assert raw["quantize"]["calibration_tile"] == raw["model_api"]["check_tile"] == [128, 256]
    for stage in ("export", "onnx", "openvino", "model-api"):
        proc = run_cli(stage, "--config", str(config), "--workdir", str(work))
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("diagnose", "--config", str(config), "--workdir", str(work), "--backend", "openvino-fp32-f32",
                   "--output", str(tmp_path / "diag"))
    assert proc.returncode == 0 and "no tensor over the budget" in proc.stdout.splitlines()[-1], proc.stdout
    report = json.loads(next((tmp_path / "diag").rglob("diagnose.json")).read_text())
    compared = {layer["tensor"] for layer in report["layers"]}
    assert "p2o.pd_op.depthwise_conv2d.0.0" not in compared and "p2o.pd_op.batch_norm_.1.0" in compared


def test_a_full_disk_in_the_toolchain_is_exit_11_and_other_failures_stay_one_line():
    from converter.errors import DiskFullError
    from converter.runners.paddle3 import _failure

    full = _failure("onnx", 1, b"Traceback (most recent call last):\n  ...\nOSError: [Errno 28] No space left on device\n")
    assert isinstance(full, DiskFullError) and full.exit_code == 11
    assert str(full) == "onnx: no space left on device (the Paddle 3 toolchain's files)"
    # the control: another failure keeps exit 8 and the toolchain's own line
    other = _failure("onnx", 1, b"error: cannot read the program\n")
    assert type(other).__name__ == "StageError" and str(other) == "onnx: cannot read the program"


def test_paddle2onnxs_refusals_come_with_what_to_do():
    from converter.stages.onnx import _pir_hint

    # paddle2onnx 2.1.0's lines on PaddleSeg's dynamic PP-LiteSeg and on MaskFormer
    assert "--input_shape 1 3 H W" in _pir_hint("[OP: pd_op.pool2d] Adaptive only support static input shape.")
    assert _pir_hint("Please set the opset_version to 17 or set auto_upgrade_opset=true.") == (
        "; paddle2onnx names no op, only the opset: set converted.onnx_opset: 17 in the config to convert at "
        "that opset")
    assert _pir_hint("something else") == "; the ONNX opset is the config's converted.onnx_opset"
