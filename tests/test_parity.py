"""parity: metrics on hand-made maps, the gate, and end-to-end runs at 256x512."""
import json
import os
import shutil

import numpy as np
import pytest

from converter.config import load_config
from converter.validate.gates import class_iou, compare, gate, top2_margin
from tests.conftest import run_cli


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


def _result(agreement, margin, gated=True, rel=1e-6):
    return {"b": {"gated": gated, "budget": "f32", "images": {"i.png": {
        "agreement": agreement, "max_flip_margin": margin, "logit_error": {"rel_p99": rel, "rel_max": rel}}}}}


def test_f32_gate_needs_agreement_near_ties_and_f32_sized_errors():
    cfg = load_config()
    assert gate(_result(cfg.min_agreement + 1e-5, cfg.tie_margin / 2), cfg) == []
    assert "agreement" in gate(_result(cfg.min_agreement - 1e-5, 0.0), cfg)[0]
    assert "flipped" in gate(_result(0.99999, cfg.tie_margin * 2), cfg)[0]
    too_big = cfg.budgets["f32"]["rel_max"] * 2   # bf16-sized errors on an f32 backend
    assert [f for f in gate(_result(1.0, 0.0, rel=too_big), cfg) if "f32 budget" in f]
    assert gate(_result(0.5, 9.0, gated=False), cfg) == []  # reported backends are not gated


@pytest.fixture(scope="module")
def parity_workdir(small_workdir, tmp_path_factory):
    """The small build's stages linked into a folder of its own: parity writes its report there."""
    work = tmp_path_factory.mktemp("parity") / "w"
    work.mkdir()
    for name in ("paddle", "onnx", "openvino"):
        os.symlink(small_workdir / name, work / name)
    return work


def test_parity_passes_on_correct_conversion(parity_workdir):
    proc = run_cli("parity", "--workdir", str(parity_workdir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("PASSED")
    report = json.loads((parity_workdir / "parity" / "report.json").read_text())
    assert report["passed"] and report["input_size"] == [512, 256]
    assert set(report["results"]) == {"onnxruntime", "openvino-fp32-f32", "openvino-fp32-default",
                                      "openvino-fp16-default"}
    assert report["runs"]["openvino-fp32-f32"]["info"]["effective_precision"].endswith("32")
    assert report["weights"]["kind"] == "synthetic"
    for image in ("street_1", "street_2", "street_3"):
        assert (parity_workdir / "parity" / f"{image}.png").stat().st_size > 10_000
    assert "# Parity report" in (parity_workdir / "parity" / "report.md").read_text()
    for entry in ("onnxruntime", "openvino-fp32-f32"):
        for m in report["results"][entry]["images"].values():
            assert m["agreement"] >= 0.9999 and "logit_error" in m


@pytest.mark.parametrize("preprocess", [{"order": [0, 1, 2]}, {"mean": [0.0] * 3}], ids=["no-reverse", "mean-0"])
def test_gate_fails_for_broken_ir_in_copied_workdir(parity_workdir, tmp_path, preprocess):
    import openvino as ov
    from converter.records import ir_path
    from converter.stages.openvino import build_ir
    from converter.util.fsutil import describe_files
    work = tmp_path / "work"
    work.mkdir()
    for name in ("paddle", "onnx"):  # parity needs no paddle-logits export
        os.symlink(parity_workdir / name, work / name)
    shutil.copytree(parity_workdir / "openvino", work / "openvino")
    config = load_config()
    pre = dict(config.baked(), **preprocess)  # the config's preprocessing, one part broken
    model = build_ir(str(parity_workdir / "paddle" / "model.pdmodel"), (1, 3, 256, 512), pre)
    ov.save_model(model, str(work / ir_path("FP32", config.name)), compress_to_fp16=False)
    # A converter bug, not tampering: the broken IR is what the stage recorded.
    record = json.loads((work / "openvino" / "openvino.json").read_text())
    record["files"]["FP32"] = describe_files(str(work / "openvino" / "FP32"), list(record["files"]["FP32"]))
    (work / "openvino" / "openvino.json").write_text(json.dumps(record))
    sample = os.path.join(os.path.dirname(os.path.dirname(__file__)), "converter", "samples", "street_2.jpg")
    proc = run_cli("parity", "--workdir", str(work), "--images", sample)
    assert proc.returncode == 10, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("FAILED") and "openvino-fp32-f32" in last
    report = json.loads((work / "parity" / "report.json").read_text())
    assert not report["passed"]
    assert report["results"]["onnxruntime"]["images"]["street_2.jpg"]["agreement"] >= 0.9999


def test_missing_artifacts_is_a_user_error(tmp_path):
    proc = run_cli("parity", "--workdir", str(tmp_path))
    assert proc.returncode == 8
    assert proc.stderr.strip() == f"error: missing {tmp_path}/paddle/export.json: run the export stage first (make convert)"


def test_unreadable_image_is_a_user_error(parity_workdir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    proc = run_cli("parity", "--workdir", str(parity_workdir), "--images", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable image")
