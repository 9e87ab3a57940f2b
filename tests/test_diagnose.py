"""diagnose: the layer where a converted model starts to disagree, and the INT8 gate on every quantized tensor.

The mutants are converter bugs, not tampering: each broken model is recorded
as its stage's own output, so that every check reads it as the build."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.support import ROOT, SMALL_HW, linked_build, lite_cli
from tests.support import rerecord as _rerecord, save_over as _save_over

IR = "openvino/FP32/ocrnet-lite.xml"
INT8 = "openvino/INT8/ocrnet-lite.xml"
RESHAPED = "1,3,64,128"   # the IRs reshape to it: a quarter of the work of the build's 128x256


def _diagnose(work, backend, out, *extra):
    proc = lite_cli("diagnose", "--workdir", str(work), "--backend", backend, "--output", str(out), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "diagnose.json").read_text())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino-fp32-f32"])
def test_a_correct_build_has_no_divergence(lite_build, tmp_path, backend):
    doc = _diagnose(lite_build, backend, tmp_path / "d")
    assert doc["first_divergence"] is None and doc["input_shape"] == [1, 3, 128, 256]
    assert len(doc["layers"]) > 200 and all(l["rel_p99"] <= 1e-4 for l in doc["layers"])
    assert [l["index"] for l in doc["layers"]] == sorted(l["index"] for l in doc["layers"])
    assert {"tensor", "op", "index", "shape", "abs_max", "rel_max", "rel_p99", "cosine", "growth"} <= set(
        doc["layers"][0])
    assert doc["unmatched"] and all({"tensor", "op", "index", "why"} <= set(u) for u in doc["unmatched"])
    md = (tmp_path / "d" / "diagnose.md").read_text()
    assert md.splitlines()[2].startswith("Verdict: no tensor over the budget")
    from PIL import Image
    assert Image.open(tmp_path / "d" / "diagnose.png").size == (1400, 520)


def test_an_ir_without_the_channel_reversal_diverges_at_the_first_tensor(no_reverse_build, tmp_path):
    doc = _diagnose(no_reverse_build, "openvino-fp32-f32", tmp_path / "d", "--first-only", "--input-shape", RESHAPED)
    assert doc["first_divergence"]["tensor"] == doc["layers"][0]["tensor"] == "batch_norm_0.tmp_2"
    assert "preprocessing" in doc["advice"][0]


def _scale_conv(xml, fraction):
    """Scale one Convolution's weights by 1.25; return the first named tensor
    it feeds (its own output's name, else its consumer's: the BatchNorm's Add)."""
    import openvino as ov
    from openvino import opset13 as ops

    model = ov.Core().read_model(str(xml))
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    conv = convs[int(fraction * (len(convs) - 1))]
    weights = conv.input_value(1).get_node()
    assert weights.get_type_name() == "Constant"
    conv.input(1).replace_source_output(ops.constant(weights.get_data().astype(np.float32) * 1.25).output(0))
    port = conv.output(0)
    while not port.get_names():
        port = next(iter(port.get_target_inputs())).get_node().output(0)
    _save_over(model, xml)
    return sorted(port.get_names())[0]


@pytest.mark.parametrize("fraction", [0.15, 0.5, 0.85])
def test_a_scaled_convolution_is_found_where_it_feeds(lite_build, tmp_path, fraction):
    work = linked_build(lite_build, tmp_path / "w", link=("paddle", "onnx"))
    fed = _scale_conv(work / IR, fraction)
    _rerecord(work / "openvino", "openvino.json", "FP32")
    doc = _diagnose(work, "openvino-fp32-f32", tmp_path / "d", "--first-only", "--input-shape", RESHAPED)
    assert doc["first_divergence"] is not None and doc["first_divergence"]["tensor"] == fed, (fed, doc["advice"])
    before = [l for l in doc["layers"] if l["index"] < doc["first_divergence"]["index"]]
    assert before and all(l["rel_p99"] <= 1e-4 and l["rel_max"] <= 1e-3 for l in before)


def _activation_fqs(model):
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
            and op.get_friendly_name().endswith("/fq_output_0")
            and op.input_value(0).get_node().get_type_name() not in ("Constant", "Convert")
            and op.input_value(0).get_names()]


def _break_fq(xml, fraction, how):
    """One activation FakeQuantize (of a named tensor) with its range x4, or
    its zero point shifted by a quarter of the range; returns the tensor."""
    import openvino as ov
    from openvino import opset13 as ops

    model = ov.Core().read_model(str(xml))
    fqs = _activation_fqs(model)
    fq = fqs[int(fraction * (len(fqs) - 1))]
    low, high = (fq.input_value(i).get_node().get_data().astype(np.float32) for i in (3, 4))
    if how == "range-x4":
        low, high = low * 4, high * 4
    else:
        low, high = low + (high - low) / 4, high + (high - low) / 4
    fq.input(3).replace_source_output(ops.constant(low).output(0))
    fq.input(4).replace_source_output(ops.constant(high).output(0))
    _save_over(model, xml)
    return sorted(fq.input_value(0).get_names())[0]   # the Paddle tensor it quantizes


@pytest.fixture
def int8_copy(lite_int8, tmp_path):
    return linked_build(lite_int8, tmp_path / "w8", link=("paddle", "onnx"))


def test_the_growth_ranking_puts_a_broken_fake_quantize_first(int8_copy, tmp_path):
    broken = _break_fq(int8_copy / INT8, 0.5, "range-x4")
    _rerecord(int8_copy / "openvino" / "INT8", "quantize.json")
    doc = _diagnose(int8_copy, "openvino-int8-default", tmp_path / "d")
    assert doc["growth"][0]["tensor"] == broken, doc["growth"][:3]
    assert any(broken in a and "--ignored-scope" in a for a in doc["advice"])
    # and a reduced precision's ranking on a correct build (bf16 where the CPU has it, else f32)
    doc = _diagnose(int8_copy, "openvino-fp32-default", tmp_path / "d2", "--input-shape", RESHAPED)
    growth = [g["growth"] for g in doc["growth"]]
    assert len(growth) == 10 and growth == sorted(growth, reverse=True) and all(g > 0 for g in growth)


# the default tier's 10 minutes: both breakages at both ends there, the full grid in the slow tier
@pytest.mark.parametrize("grid", [((0.1, "range-x4"), (0.9, "zero-point")),
                                  pytest.param(tuple((f, h) for f in (0.1, 0.5, 0.9) for h in ("range-x4", "zero-point")),
                                               marks=pytest.mark.slow)])
def test_the_int8_gate_fails_a_broken_fake_quantize_at_any_depth(lite_int8, tmp_path, grid):
    """Each quantized tensor's error against the profile quantize recorded:
    the clean IR passes; one FakeQuantize mis-scaled or mis-shifted, at the
    first, middle and last third, fails, with that tensor first."""
    from tests.support import lite_config
    from converter.records import read_record
    from converter.engine.int8_profile import failures

    config = lite_config()
    profile = read_record(str(lite_int8), "quantize").params["error_profile"]
    assert len(profile["tensors"]) > 80 and profile["precision_hint"] == "f32"
    fp32 = str(lite_int8 / IR)
    assert failures("int8", profile, config, fp32_xml=fp32, int8_xml=str(lite_int8 / INT8), full_hw=SMALL_HW) == []
    # a profile that misses a quantized tensor (another IR, an older version) does not pass
    off_grid = dict(profile, tile=[100, 256])   # no tile of the input: not measured on a guess
    assert "tile" in failures("int8", off_grid, config, fp32_xml=fp32, int8_xml=str(lite_int8 / INT8), full_hw=SMALL_HW)[0]
    trimmed = dict(profile, tensors=dict(list(profile["tensors"].items())[1:]))
    assert any("not in the recorded profile" in f and "--force" in f
               for f in failures("int8", trimmed, config, fp32_xml=fp32, int8_xml=str(lite_int8 / INT8), full_hw=SMALL_HW))
    for fraction, how in grid:
        xml = tmp_path / f"{how}-{fraction}" / "m.xml"
        xml.parent.mkdir()
        shutil.copy(lite_int8 / INT8, xml)
        shutil.copy(str(lite_int8 / INT8)[:-4] + ".bin", str(xml)[:-4] + ".bin")
        broken = _break_fq(xml, fraction, how)
        found = failures("int8", profile, config, fp32_xml=fp32, int8_xml=str(xml), full_hw=SMALL_HW)
        assert found and broken in found[0], (how, fraction, broken, found[:3])   # the first in network order


def test_parity_fails_a_broken_int8_build_and_says_how_to_diagnose_it(int8_copy):
    broken = _break_fq(int8_copy / INT8, 0.5, "zero-point")
    _rerecord(int8_copy / "openvino" / "INT8", "quantize.json")
    proc = lite_cli("parity", "--workdir", str(int8_copy), "--backends", "openvino-int8-default", "--images",
                   os.path.join(ROOT, "converter", "samples", "street_1.jpg"))
    assert proc.returncode == 10, proc.stdout + proc.stderr
    report = json.loads((int8_copy / "parity" / "report.json").read_text())
    assert any(broken in f for f in report["failures"]), report["failures"]
    command = report["diagnose"]["openvino-int8-default"]["command"]
    assert command.startswith("ocrnet-convert diagnose --config ") and "--workdir" in command and "--backend openvino-int8-default" in command
    assert command in (int8_copy / "parity" / "report.md").read_text()


def _baseline_peak_mb(work):
    """Peak RSS of one process running the original and the FP32 IR once, as
    diagnose configures them (with taps: Paddle without its fusion passes),
    returning one small tensor each."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r})\n"
            "import numpy as np\nfrom converter.runners import make_runner\nfrom converter.util.memory import peak_rss_mb\n"
            f"x = np.zeros((1, 3, 128, 256), np.float32)\n"
            f"make_runner('paddle', {str(work / 'paddle')!r}, taps=['batch_norm_0.tmp_2']).infer(x)\n"
            f"make_runner('openvino', {str(work / IR)!r}, shape=[1, 3, 128, 256], taps=['batch_norm_0.tmp_2']).infer(x)\n"
            "print(peak_rss_mb())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout.strip().splitlines()[-1])


def test_memory_is_bounded_by_the_window_not_the_network(lite_build, tmp_path):
    """In windows of 16 MB of tensors per model, the peak RSS is the runtimes'
    plus a few windows, and the figures are those of one window for all."""
    whole = _diagnose(lite_build, "openvino-fp32-f32", tmp_path / "whole")
    windowed = _diagnose(lite_build, "openvino-fp32-f32", tmp_path / "win", "--window-mb", "16")
    assert whole["windows"]["count"] == 1 and windowed["windows"]["count"] > 3
    assert windowed["windows"]["largest_mb"] <= 16
    assert [(l["tensor"], l["rel_p99"]) for l in windowed["layers"]] == [(l["tensor"], l["rel_p99"])
                                                                        for l in whole["layers"]]
    base = _baseline_peak_mb(lite_build)
    assert windowed["peak_rss_mb"] <= base + 4 * 16 + 256, (windowed["peak_rss_mb"], base)
    assert windowed["peak_rss_mb"] < whole["peak_rss_mb"]


def test_two_images_with_one_stem_get_a_report_each(lite_build, tmp_path):
    """a/x.png and b/x.jpg: the second report overwrote the first, and diagnose exited 0."""
    from PIL import Image

    sample = os.path.join(ROOT, "converter", "samples", "street_1.jpg")
    for folder, ext in (("a", "png"), ("b", "jpg")):
        (tmp_path / folder).mkdir()
        Image.open(sample).save(tmp_path / folder / f"x.{ext}")
    out = tmp_path / "d"
    proc = lite_cli("diagnose", "--workdir", str(lite_build), "--backend", "openvino-fp32-f32", "--output", str(out),
                    "--input-shape", RESHAPED, "--images", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.jpg"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = {p.parent.name: json.loads(p.read_text())["image"] for p in out.glob("*/diagnose.json")}
    assert sorted(images) == ["x", "x-2"] and len(set(images.values())) == 2, images
