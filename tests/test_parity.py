"""parity: metrics on hand-made maps, the gate, and end-to-end runs at the lite build's 128x256."""
import json
import os

import numpy as np
import pytest

from tests.support import lite_config
from converter.engine.gates import class_iou, compare, gate, top2_margin
from tests.support import SAMPLES, SMALL_HW, ir, linked_build, lite_cli, rerecord


def test_compare_counts_flips_ious_and_margins():
    ref = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.int32)
    got = np.array([[0, 1, 1, 1], [0, 0, 1, 2]], np.int32)
    logits = np.zeros((3, 2, 4), np.float32)
    logits[0][ref == 0] = 1.0
    logits[1][ref == 1] = 1.0
    logits[1, 0, 1] = 0.99   # the first flip is a near-tie: margin 0.01
    logits[2, 1, 3] = 0.5    # the second is not: margin 0.5
    m = compare(ref, got, logits, logits + 0.001, num_classes=3)
    assert m["disagree"] == 2 and m["agreement"] == pytest.approx(6 / 8)
    assert sorted((f["from"], f["to"], f["count"]) for f in m["top_flips"]) == [(0, 1, 1), (1, 2, 1)]
    # class 0: 3 of ref's 4 kept, none added -> 3/4; class 1: inter 3, union 5; class 2: 0/1
    assert m["class_iou"] == {"0": 0.75, "1": 0.6, "2": 0.0}
    assert m["mean_iou"] == pytest.approx((0.75 + 0.6 + 0.0) / 3)
    assert m["max_flip_margin"] == pytest.approx(0.5)
    assert m["logit_error"]["abs_max"] == pytest.approx(0.001, rel=1e-3)


def test_top2_margin():
    logits = np.array([[[3.0]], [[1.0]], [[2.5]]])
    assert top2_margin(logits)[0, 0] == pytest.approx(0.5)


def test_class_iou_ignores_absent_classes():
    ref = np.array([0, 0, 2], np.int32)
    assert class_iou(ref, ref, 19) == {0: 1.0, 2: 1.0}


def _result(agreement, margin, gated=True, rel=1e-6, scale=10.0):
    return {"b": {"gated": gated, "budget": "f32", "images": {"i.png": {
        "agreement": agreement, "max_flip_margin": margin,
        "logit_error": {"rel_p99": rel, "rel_max": rel, "ref_abs_max": scale}}}}}


def test_f32_gate_needs_agreement_near_ties_and_f32_sized_errors():
    cfg = lite_config()
    assert gate(_result(cfg.min_agreement + 1e-5, cfg.tie_margin / 2), cfg) == []
    assert "agreement" in gate(_result(cfg.min_agreement - 1e-5, 0.0), cfg)[0]
    assert "flipped" in gate(_result(0.99999, cfg.tie_margin * 2), cfg)[0]
    too_big = cfg.budgets["f32"]["rel_max"] * 2   # bf16-sized errors on an f32 backend
    assert [f for f in gate(_result(1.0, 0.0, rel=too_big), cfg) if "f32 budget" in f]
    assert gate(_result(0.5, 9.0, gated=False), cfg) == []  # reported backends are not gated


def test_non_finite_logits_are_named_not_reported_as_an_error_of_nan():
    cfg = lite_config()
    ref = np.zeros((3, 4, 4), np.float32)
    got = ref.copy()
    got[1, 2, :] = [np.inf, -np.inf, np.nan, 1.0]   # what an f32 overflow leaves (SeaFormer, PaddleSeg's init)
    err = compare(ref.argmax(0), got.argmax(0), ref, got, 3)["logit_error"]
    assert (err["ref_nonfinite"], err["got_nonfinite"]) == (0, 3)
    result = {"b": {"gated": True, "budget": "fp16", "images": {"i.png": {"agreement": 1.0, "logit_error": err}}}}
    assert gate(result, cfg) == ["b on i.png: the converted logits hold 3 NaN or inf value(s) where the "
                                 "original's are finite (diagnose names the first tensor that overflows)"]
    err = compare(got.argmax(0), ref.argmax(0), got, ref, 3)["logit_error"]   # the original overflowed
    result["b"]["images"]["i.png"]["logit_error"] = err
    assert "the original's own logits hold 3 NaN or inf" in gate(result, cfg)[0]
    # the control: finite logits give no such failure
    err = compare(ref.argmax(0), ref.argmax(0), ref, ref + 1e-9, 3)["logit_error"]
    result["b"]["images"]["i.png"]["logit_error"] = err
    assert gate(result, cfg) == []


def test_the_near_tie_bound_follows_logits_too_large_for_tau():
    # A PaddleSeg Deeplabv3-R101 export with its own initialisation: logits of
    # 1.2e6 (one f32 ulp: 0.125), one pixel flipped with a margin of 0.97
    cfg = lite_config()
    assert cfg.tie_margin == 0.01 and cfg.budgets["f32"]["rel_p99"] == 1e-4
    assert gate(_result(0.99999, 0.97, scale=1.2e6), cfg) == []
    # the bound is 1e-4 of the scale (120 here), not any margin at all
    assert "near-tie bound 120 flipped" in gate(_result(0.99999, 121.0, scale=1.2e6), cfg)[0]
    # logits up to 100: tau itself, as before
    assert "near-tie bound 0.01 flipped" in gate(_result(0.99999, 0.011, scale=100.0), cfg)[0]
    assert gate(_result(0.99999, 0.0099, scale=100.0), cfg) == []


@pytest.fixture(scope="module")
def parity_workdir(lite_build, tmp_path_factory):
    """The small build's stages linked into a folder of its own: parity writes its report there."""
    work = tmp_path_factory.mktemp("parity") / "w"
    work.mkdir()
    for name in ("paddle", "onnx", "openvino"):
        os.symlink(lite_build / name, work / name)
    return work


def test_parity_passes_on_correct_conversion(parity_workdir):
    proc = lite_cli("parity", "--workdir", str(parity_workdir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("PASSED")
    report = json.loads((parity_workdir / "parity" / "report.json").read_text())
    assert report["passed"] and report["input_size"] == [256, 128]
    assert set(report["results"]) == {"onnxruntime", "openvino-fp32-f32", "openvino-fp32-default",
                                      "openvino-fp16-default"}
    assert report["runs"]["openvino-fp32-f32"]["info"]["effective_precision"].endswith("32")
    assert report["weights"]["kind"] == "synthetic"
    assert "paddle3_toolchain" not in report["system"]   # a legacy program's reference ran here
    for image in ("street_1", "street_2", "street_3"):
        assert (parity_workdir / "parity" / f"{image}.png").stat().st_size > 10_000
    assert "# Parity report" in (parity_workdir / "parity" / "report.md").read_text()
    for entry in ("onnxruntime", "openvino-fp32-f32"):
        for m in report["results"][entry]["images"].values():
            assert m["agreement"] >= 0.9999 and "logit_error" in m


def _mean_zero_build(lite_build, tmp_path):
    """The lite build with an FP32 IR that subtracts no mean, recorded as the stage's output."""
    import openvino as ov
    from converter.stages.openvino import build_ir

    work = linked_build(lite_build, tmp_path / "work", link=("paddle", "onnx"))
    pre = dict(lite_config().baked(), mean=[0.0] * 3)  # the config's preprocessing, one part broken
    ir(work).unlink()
    ir(work, ext="bin").unlink()
    model = build_ir(str(work / "paddle" / "model.pdmodel"), (1, 3, *SMALL_HW), pre)
    ov.save_model(model, str(ir(work)), compress_to_fp16=False)
    rerecord(work / "openvino", "openvino.json", "FP32")   # a converter bug, not tampering
    return work


# the default tier's 10 minutes: one broken preprocessing there, the other in the slow tier
@pytest.mark.parametrize("broken", ["no-reverse", pytest.param("mean-0", marks=pytest.mark.slow)])
def test_gate_fails_for_broken_ir_in_copied_workdir(request, lite_build, tmp_path, broken):
    if broken == "no-reverse":
        work = linked_build(request.getfixturevalue("no_reverse_build"), tmp_path / "work",
                            link=("paddle", "onnx", "openvino"))
    else:
        work = _mean_zero_build(lite_build, tmp_path)
    sample = os.path.join(SAMPLES, "street_2.jpg")
    proc = lite_cli("parity", "--workdir", str(work), "--images", sample)
    assert proc.returncode == 10, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("FAILED") and "openvino-fp32-f32" in last
    report = json.loads((work / "parity" / "report.json").read_text())
    assert not report["passed"]
    assert report["results"]["onnxruntime"]["images"]["street_2.jpg"]["agreement"] >= 0.9999


def test_missing_artifacts_is_a_user_error(tmp_path):
    proc = lite_cli("parity", "--workdir", str(tmp_path))
    assert proc.returncode == 8
    assert proc.stderr.strip() == f"error: missing {tmp_path}/paddle/export.json: run the export stage first (make convert)"


def test_unreadable_image_is_a_user_error(parity_workdir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    proc = lite_cli("parity", "--workdir", str(parity_workdir), "--images", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable image")
