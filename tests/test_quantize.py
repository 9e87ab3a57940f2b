"""INT8 by NNCF and the gates of reduced precisions, at the lite build's 128x256.

The negative controls break a reduced-precision IR the way quantization or
storage breaks in practice (one FakeQuantize's range scaled or shifted, an
FP16 weight tensor corrupted), record the broken files as the stage's own
output (a converter bug, not tampering), and show that parity fails them;
the untouched copies pass, so the copying itself breaks nothing.
"""
import json
import os

import numpy as np
import pytest

from converter.config import ConfigError, validate
from tests.support import lite_config
from converter.engine.gates import gate, task_result
from converter.data.images import SAMPLES_DIR
from tests.support import INT8_TILE as TILE   # 4 tiles per 128x256 input, 12 from the 3 samples
from tests.support import at_build_size, ir, linked_build, lite_cli, rerecord, save_over

SAMPLE = os.path.join(SAMPLES_DIR, "street_2.jpg")


def _image(rel_p99, rel_max, agreement=0.5):
    return {"agreement": agreement, "max_flip_margin": 9.0,
            "logit_error": {"rel_p99": rel_p99, "rel_max": rel_max}}


@pytest.mark.parametrize("budget", ["bf16", "fp16", "int8"])  # f32: tests/test_parity.py
def test_numeric_budget_gates_p99_and_max_not_agreement(budget):
    cfg = lite_config()
    bound = cfg.budgets[budget]
    inside = {"b": {"gated": True, "budget": budget,
                    "images": {"i": _image(bound["rel_p99"] * 0.9, bound["rel_max"] * 0.9)}}}
    assert gate(inside, cfg) == []   # low agreement and big flip margins are not gated
    for p99, worst, stat in ((bound["rel_p99"] * 1.1, bound["rel_max"] * 0.9, "rel_p99"),
                             (bound["rel_p99"] * 0.9, bound["rel_max"] * 1.1, "rel_max"),
                             (float("nan"), bound["rel_max"] * 0.9, "rel_p99")):
        failures = gate({"b": {"gated": True, "budget": budget, "images": {"i": _image(p99, worst)}}}, cfg)
        assert len(failures) == 1 and stat in failures[0] and budget in failures[0]
    no_logits = {"b": {"gated": True, "budget": budget, "images": {"i": {"agreement": 1.0}}}}
    assert "no logits" in gate(no_logits, cfg)[0]


def test_task_budget_is_the_miou_drop_against_ground_truth():
    cfg = lite_config()
    names = cfg.class_names[:2]
    # truth x prediction counts for two classes
    ref = np.array([[90, 10], [10, 90]])
    same = task_result(ref, ref, names)
    assert same["miou_drop"] == 0 and same["miou"] == pytest.approx(90 / 110)
    worse = np.array([[80, 20], [20, 80]])
    t = task_result(ref, worse, names)
    # IoU 90/110 -> 80/120 for both classes
    assert t["miou_drop"] == pytest.approx(90 / 110 - 80 / 120)
    assert t["per_class"]["road"]["drop"] == pytest.approx(90 / 110 - 80 / 120)
    entry = {"gated": True, "budget": "int8", "images": {}, "task": t}
    assert "below the original's" in gate({"b": entry}, cfg)[0]
    assert gate({"b": dict(entry, task=same)}, cfg) == []
    slightly = np.array([[89, 11], [10, 90]])   # a drop under 1 %
    assert gate({"b": dict(entry, task=task_result(ref, slightly, names))}, cfg) == []


@pytest.mark.parametrize("change, field", [
    (lambda r: r["parity"]["budgets"].pop("int8"), "parity.budgets"),
    (lambda r: r["parity"]["budgets"].pop("f32"), "parity.budgets"),
    (lambda r: r["parity"]["budgets"]["fp16"].update(rel_p99=0.9, rel_max=0.1), "parity.budgets.fp16"),
    (lambda r: r["parity"]["budgets"]["bf16"].update(rel_max="big"), "parity.budgets.bf16.rel_max"),
    (lambda r: r["parity"].update(max_miou_drop=2), "parity.max_miou_drop"),
    (lambda r: r["quantize"].update(preset="fast"), "quantize.preset"),
    (lambda r: r["quantize"].update(calibration_tile=[100, 512]), "quantize.calibration_tile"),
    (lambda r: r["quantize"].update(subset_size=0), "quantize.subset_size"),
    (lambda r: r.pop("quantize"), "quantize: missing"),
])
def test_budget_and_quantize_config_errors_name_the_field(change, field):
    import copy

    raw = copy.deepcopy(lite_config().raw)
    change(raw)
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert field in str(err.value)


# Counted from the architecture (family.py's table, read by hand), not from the code:
# (fusion Adds, residual Adds). A module of b branches fuses b x (b - 1) times.
#   W18_Small_V1: stages 2-4 of 1 module each: 1 x 2 x 1 + 1 x 3 x 2 + 1 x 4 x 3;
#     1 bottleneck in layer1, then 2 basic blocks per branch: 1 + 1x2x2 + 1x3x2 + 1x4x2.
#   W48: 1, 4 and 3 modules: 1 x 2 x 1 + 4 x 3 x 2 + 3 x 4 x 3;
#     4 bottlenecks in layer1, then 4 basic blocks per branch: 4 + 1x2x4 + 4x3x4 + 3x4x4.
ADDS = {"lite": (1 * 2 * 1 + 1 * 3 * 2 + 1 * 4 * 3, 1 + 1 * 2 * 2 + 1 * 3 * 2 + 1 * 4 * 2),
        "w48": (1 * 2 * 1 + 4 * 3 * 2 + 3 * 4 * 3, 4 + 1 * 2 * 4 + 4 * 3 * 4 + 3 * 4 * 4)}


@pytest.mark.parametrize("model_name", ["lite", pytest.param("w48", marks=pytest.mark.slow)])
def test_fusion_adds_are_the_architectures(request, model_name):
    import openvino as ov

    from converter.stages.quantize import fusion_adds

    work, stem = ((request.getfixturevalue("lite_build"), "ocrnet-lite") if model_name == "lite"
                  else (request.getfixturevalue("w48_build"), "ocrnet-hrnet-w48-paddle"))
    fusion, residual = ADDS[model_name]
    model = ov.Core().read_model(str(ir(work, name=stem)))
    names = fusion_adds(model)
    assert len(names) == len(set(names)) == fusion
    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    assert all(ops[n].get_type_name() == "Add" for n in names)
    # and the other Adds of two activations are exactly the blocks' residual Adds
    both_activations = [op for op in ops.values() if op.get_type_name() == "Add" and all(
        op.input_value(i).get_node().get_type_name() != "Constant" for i in range(2))]
    assert len(both_activations) - len(names) == residual


def _int8(work):
    return work / "openvino" / "INT8"


def test_quantize_writes_a_recorded_int8_ir_and_skips_when_up_to_date(lite_int8, tmp_path):
    record = json.loads((_int8(lite_int8) / "quantize.json").read_text())
    assert record["stage"] == "quantize" and record["input_shape"] == [1, 3, 128, 256]
    assert record["calibration"]["tiles"] == 12 and record["calibration"]["tile"] == [64, 128]
    assert record["ignored_adds"] == ADDS["lite"][0] and record["fake_quantize_nodes"] > 80
    assert record["options"]["preset"] == "mixed" and record["weights"]["kind"] == "synthetic"
    assert record["error_profile"]["tile"] == [64, 128]   # the calibration tile: parity measures it again
    fp32 = lite_int8 / "openvino" / "FP32" / "ocrnet-lite.bin"
    assert os.path.getsize(_int8(lite_int8) / "ocrnet-lite.bin") < 0.4 * os.path.getsize(fp32)
    # up to date: skipped (on a copy: the shared build stays as it is)
    work = linked_build(lite_int8, tmp_path / "w", link=("paddle", "onnx"))
    proc = lite_cli("quantize", "--workdir", str(work), "--calibration-tile", TILE)
    assert proc.returncode == 0 and "skipped" in proc.stderr


@pytest.mark.slow   # a second NNCF run
def test_quantize_again_gives_the_same_bytes(lite_int8, tmp_path):
    record = json.loads((_int8(lite_int8) / "quantize.json").read_text())
    before = {n: record["files"][n]["sha256"] for n in record["files"]}
    work = linked_build(lite_int8, tmp_path / "w", link=("paddle", "onnx"))
    proc = lite_cli("quantize", "--workdir", str(work), "--calibration-tile", TILE, "--force")
    assert proc.returncode == 0, proc.stderr
    again = json.loads((_int8(work) / "quantize.json").read_text())
    assert {n: again["files"][n]["sha256"] for n in again["files"]} == before


def test_parity_gates_int8_and_passes(lite_int8, tmp_path):
    work = linked_build(lite_int8, tmp_path / "w", link=("paddle", "onnx", "openvino"))   # parity writes there
    proc = lite_cli("parity", "--workdir", str(work), "--images", SAMPLE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((work / "parity" / "report.json").read_text())
    entry = report["results"]["openvino-int8-default"]
    assert entry["gated"] and entry["budget"] == "int8" and report["not_built"] == {}
    err = entry["images"]["street_2.jpg"]["logit_error"]
    assert 0 < err["rel_p99"] <= lite_config().budgets["int8"]["rel_p99"]
    assert "openvino-int8-default" in (work / "parity" / "report.md").read_text()


def test_parity_without_int8_says_it_was_not_built(lite_build, tmp_path):
    work = linked_build(lite_build, tmp_path / "w", link=("paddle", "onnx", "openvino"))
    proc = lite_cli("parity", "--workdir", str(work), "--images", SAMPLE, "--backends", "openvino-fp32-f32")
    assert proc.returncode == 0, proc.stderr
    proc = lite_cli("parity", "--workdir", str(work), "--images", SAMPLE, "--backends", "openvino-int8-default")
    assert proc.returncode == 8 and "quantize" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_int8_from_a_rebuilt_fp32_ir_is_refused_as_stale_by_name(lite_int8, tmp_path):
    work = linked_build(lite_int8, tmp_path / "w", link=("paddle", "onnx"), copy=("openvino/INT8/quantize.json",))
    record = json.loads((work / "openvino" / "INT8" / "quantize.json").read_text())
    record["built_from"]["openvino/FP32/ocrnet-lite.bin"] = "0" * 64
    (work / "openvino" / "INT8" / "quantize.json").write_text(json.dumps(record))
    proc = lite_cli("parity", "--workdir", str(work), "--images", SAMPLE, "--backends", "openvino-int8-default")
    assert proc.returncode == 8 and "no longer" in proc.stderr, proc.stderr


def _last_activation_fq(model):
    """The FakeQuantize on the classifier's input activation: the last one
    whose input is not a weight constant."""
    fqs = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
           and op.input_value(0).get_node().get_type_name() not in ("Constant", "Convert")]
    return fqs[-1]


def _break_int8(src, dst, how):
    import openvino as ov
    from openvino import opset13 as ops

    core = ov.Core()
    model = core.read_model(str(src))
    fq = _last_activation_fq(model)
    low, high = (fq.input_value(i).get_node().get_data().astype(np.float32) for i in (3, 4))
    if how == "range-x4":
        low, high = low * 4, high * 4
    else:  # "zero-point": the range shifted by a quarter of its width
        shift = (high - low) / 4
        low, high = low + shift, high + shift
    fq.input(3).replace_source_output(ops.constant(low).output(0))
    fq.input(4).replace_source_output(ops.constant(high).output(0))
    save_over(model, dst)


# the default tier's 10 minutes: the shifted zero point slow (the diagnose grid
# of the default tier breaks a FakeQuantize both ways, and parity trips there too)
@pytest.mark.parametrize("how", ["range-x4", pytest.param("zero-point", marks=pytest.mark.slow)])
def test_a_broken_int8_ir_fails_its_budget(lite_int8, tmp_path, how):
    work = linked_build(lite_int8, tmp_path / "w", link=("paddle", "onnx"))
    xml = _int8(work) / "ocrnet-lite.xml"
    _break_int8(xml, xml, how)
    rerecord(_int8(work), "quantize.json")
    proc = lite_cli("parity", "--workdir", str(work), "--images", SAMPLE, "--backends", "openvino-int8-default")
    assert proc.returncode == 10, proc.stdout + proc.stderr
    report = json.loads((work / "parity" / "report.json").read_text())
    failures = report["failures"]
    # the logit budget catches the last FakeQuantize on its own; the per-tensor profile fails it as well
    assert any("int8 budget" in f for f in failures) and all(f.startswith("openvino-int8-default") for f in failures)
    assert any("quantized tensor" in f for f in failures), failures


def _corrupt_fp16(xml, fraction=0.05, seed=0):
    """Overwrite part of the largest f16 weight tensor of the classifier head
    with noise of the tensor's own scale, as a damaged download would."""
    import openvino as ov
    from openvino import opset13 as ops

    model = ov.Core().read_model(str(xml))
    consts = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"
              and op.get_element_type() == ov.Type.f16 and len(op.get_output_shape(0)) == 4]
    target = consts[-3]   # a conv of the OCR head, shortly before the classifier
    data = target.get_data().astype(np.float32).copy()
    rng = np.random.default_rng(seed)
    flat = data.reshape(-1)
    idx = rng.choice(flat.size, int(flat.size * fraction), replace=False)
    flat[idx] = rng.standard_normal(idx.size).astype(np.float32) * float(np.abs(flat).max())
    target.output(0).replace(ops.constant(data.astype(np.float16)).output(0))
    save_over(model, xml)


def test_a_corrupted_fp16_ir_fails_its_budget(lite_build, tmp_path):
    work = linked_build(lite_build, tmp_path / "w", link=("paddle", "onnx"))
    args = ("parity", "--workdir", str(work), "--images", SAMPLE, "--backends", "openvino-fp16-default")
    assert lite_cli(*args).returncode == 0   # the intact copy passes
    _corrupt_fp16(work / "openvino" / "FP16" / "ocrnet-lite.xml")
    rerecord(work / "openvino", "openvino.json", "FP16")
    proc = lite_cli(*args)
    assert proc.returncode == 10, proc.stdout + proc.stderr
    report = json.loads((work / "parity" / "report.json").read_text())
    assert report["failures"] and all("fp16 budget" in f for f in report["failures"])


def test_quantize_refuses_bad_options_and_missing_inputs(tmp_path, lite_build):
    proc = lite_cli("quantize", "--workdir", str(tmp_path))
    assert proc.returncode == 8 and proc.stderr.startswith("error: missing") and "openvino" in proc.stderr
    work = linked_build(lite_build, tmp_path / "w", link=("paddle", "onnx"))
    proc = lite_cli("quantize", "--workdir", str(work), "--calibration-tile", "100x256")
    assert proc.returncode == 2 and "multiples of 32" in proc.stderr
    proc = lite_cli("quantize", "--workdir", str(work), "--calibration-tile", "96x256")
    assert proc.returncode != 0 and "does not divide" in proc.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    proc = lite_cli("quantize", "--workdir", str(work), "--calibration-tile", TILE, "--images", str(bad))
    # refused before NNCF starts: the error is the only line on stderr
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {bad}: not a readable image")
    assert not (work / "openvino" / "INT8").exists()


@pytest.mark.slow   # the default tier's 10 minutes: test_task_budget_is_the_miou_drop_against_ground_truth stays
def test_parity_with_ground_truth_gates_the_miou_drop(lite_int8, tmp_path):
    import subprocess
    import sys

    root = tmp_path / "scenes"
    tool = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "make_samples.py")
    subprocess.run([sys.executable, tool, "--output", str(root), "--seeds", "7", "8"], check=True,
                   capture_output=True)
    work = linked_build(lite_int8, tmp_path / "w", link=("paddle", "onnx", "openvino"))
    proc = lite_cli("parity", "--workdir", str(work), "--cityscapes", str(root),
                   "--backends", "openvino-fp32-f32", "openvino-int8-default")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((work / "parity" / "report.json").read_text())
    assert report["labels"]["split"] == "val" and len(report["images"]) == 2
    # the mIoUs counted here, pixel by pixel, from each model's own maps
    from PIL import Image

    from converter.runners import make_runner
    from tests.support import converted_input, original_input
    from tests.labelled import expected

    pairs = sorted((p, root / "gtFine" / "val" / p.parent.name / p.name.replace("leftImg8bit", "gtFine_labelIds"))
                   for p in (root / "leftImg8bit" / "val").glob("*/*.png"))
    gts = [np.asarray(Image.open(g)) for _, g in pairs]
    rgbs = [at_build_size(p) for p, _ in pairs]

    def miou(runner, prep):
        preds = [np.asarray(Image.fromarray(runner.infer(prep(rgb))["argmax_0.tmp_0"][0].astype(np.uint8))
                            .resize(gt.shape[::-1], Image.NEAREST)) for rgb, gt in zip(rgbs, gts)]
        return expected(preds, gts)[1]
    original = miou(make_runner("paddle", str(work / "paddle")), original_input)
    for name, precision in (("openvino-fp32-f32", "f32"), ("openvino-int8-default", None)):
        xml = "FP32" if name.endswith("f32") else "INT8"
        got = miou(make_runner("openvino", str(work / "openvino" / xml / "ocrnet-lite.xml"),
                               precision=precision), converted_input)
        task = report["results"][name]["task"]
        assert task["original_miou"] == pytest.approx(original, abs=1e-3)
        assert task["miou"] == pytest.approx(got, abs=1e-3), name
        assert task["miou_drop"] == pytest.approx(original - got, abs=2e-3), name
    assert report["results"]["openvino-fp32-f32"]["task"]["miou_drop"] == pytest.approx(0, abs=1e-3)
    assert "Against ground truth" in (work / "parity" / "report.md").read_text()


def test_a_stale_int8_is_left_out_of_default_parity_but_refused_by_name(lite_int8, tmp_path):
    """After `make convert` rebuilt the FP32 IR, parity (and so convert) runs
    without the stale INT8 and says why; asked for by name, it is an error."""
    work = linked_build(lite_int8, tmp_path / "w", link=("paddle", "onnx"), copy=("openvino/INT8/quantize.json",))
    path = work / "openvino" / "INT8" / "quantize.json"
    record = json.loads(path.read_text())
    record["built_from"]["openvino/FP32/ocrnet-lite.xml"] = "0" * 64
    path.write_text(json.dumps(record))
    proc = lite_cli("parity", "--workdir", str(work), "--images", SAMPLE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((work / "parity" / "report.json").read_text())
    assert "openvino-int8-default" not in report["results"]
    assert "no longer there" in report["not_built"]["openvino-int8-default"]


@pytest.mark.slow   # a second NNCF run
def test_quantize_with_accuracy_control_on_labelled_scenes(lite_build, tmp_path):
    import subprocess
    import sys

    root = tmp_path / "scenes"
    tool = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "make_samples.py")
    subprocess.run([sys.executable, tool, "--output", str(root), "--seeds", "11"], check=True, capture_output=True)
    work = linked_build(lite_build, tmp_path / "w", link=("paddle", "onnx"))
    proc = lite_cli("quantize", "--workdir", str(work), "--calibration-tile", TILE, "--subset-size", "4",
                   "--cityscapes", str(root), "--max-drop", "0.02", "--max-iterations", "1")
    assert proc.returncode == 0, proc.stderr
    acc = json.loads((_int8(work) / "quantize.json").read_text())["accuracy_control"]
    assert acc["images"] == 1 and acc["tiles"] == 4 and acc["max_drop"] == 0.02
    # both mIoUs counted here on the same four 64x128 tiles of the 128x256 input, with the labels
    # brought to that size by nearest-neighbour, at f32 and the tile shape as the stage measures them
    import openvino as ov
    from PIL import Image

    from tests.support import converted_input
    from tests.labelled import expected, to_train

    image = next((root / "leftImg8bit" / "val").glob("*/*.png"))
    label = root / "gtFine" / "val" / image.parent.name / image.name.replace("leftImg8bit", "gtFine_labelIds")
    x = converted_input(at_build_size(image))
    gt = to_train(np.asarray(Image.open(label).resize((256, 128), Image.NEAREST)))
    tiles = [(slice(r, r + 64), slice(c, c + 128)) for r in (0, 64) for c in (0, 128)]

    def miou(xml):
        model = ov.Core().read_model(str(xml))
        model.reshape({model.inputs[0]: [1, 3, 64, 128]})
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        preds = [compiled(np.ascontiguousarray(x[:, :, rows, cols]))[0][0] for rows, cols in tiles]
        return expected(preds, [gt[rows, cols] for rows, cols in tiles], train_ids=True)[1]
    fp32, int8 = miou(work / "openvino" / "FP32" / "ocrnet-lite.xml"), miou(_int8(work) / "ocrnet-lite.xml")
    assert acc["miou_fp32_ir"] == pytest.approx(fp32, abs=1e-3)
    assert acc["miou_int8_ir"] == pytest.approx(int8, abs=1e-3)
    assert acc["drop"] == pytest.approx(fp32 - int8, abs=2e-3)
    proc = lite_cli("quantize", "--workdir", str(work), "--cityscapes", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: no images under")


@pytest.mark.slow   # a second NNCF run
def test_ignored_tensors_keep_the_ops_that_compute_with_them_in_float(lite_int8, tmp_path):
    """`--ignored-scope hrnet-fusion,TENSOR`: the convolution that reads the
    tensor through its ReLU loses its input FakeQuantize, and nothing else
    does; the clean build (the control) has it."""
    import openvino as ov

    def conv_after_relu(xml, relu="relu_3.tmp_0"):
        model = ov.Core().read_model(str(xml))
        ops = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
        for op in ops:
            src = op.input_value(0)
            seen = src.get_node()
            if seen.get_type_name() == "FakeQuantize":
                seen = seen.input_value(0).get_node()
            if relu in seen.output(0).get_names():
                return op.input_value(0).get_node().get_type_name(), model
        raise AssertionError(f"no convolution reads {relu}")

    clean_xml = _int8(lite_int8) / "ocrnet-lite.xml"
    kind, _ = conv_after_relu(clean_xml)
    assert kind == "FakeQuantize"
    work = linked_build(lite_int8, tmp_path / "w", link=("paddle", "onnx"))
    proc = lite_cli("quantize", "--workdir", str(work), "--force",
                   "--ignored-scope", "hrnet-fusion,batch_norm_4.tmp_2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    kind, _ = conv_after_relu(_int8(work) / "ocrnet-lite.xml")
    assert kind != "FakeQuantize"
    record = json.loads((_int8(work) / "quantize.json").read_text())
    clean = json.loads((_int8(lite_int8) / "quantize.json").read_text())
    assert record["fake_quantize_nodes"] < clean["fake_quantize_nodes"]
    assert "relu_3.tmp_0" in record["ignored_readers"]
    line = lite_cli("quantize", "--workdir", str(work), "--ignored-scope", "hrnet-fusion,no_such.tmp_0").stderr
    assert "no tensor named 'no_such.tmp_0'" in line
