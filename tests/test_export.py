"""export stage: files, format, and a round trip through Paddle Inference."""
import json

import numpy as np
import pytest

from converter.data.images import load_rgb, resize_rgb, sample_images
from tests.support import original_contract, original_input
from tests.support import run_cli

# (backbone, values in its state dict): the lite model's 3.9 M, W48's 70.47 M (the fixture's count)
MODELS = {"lite": ("hrnet_w18_small_v1", 3_857_446), "w48": ("hrnet_w48", 70_466_150)}


def _small_input():
    return original_input(resize_rgb(load_rgb(sample_images()[0]), 512, 256))


@pytest.fixture(params=["lite", pytest.param("w48", marks=pytest.mark.slow)])
def exported(request):
    """(model, its export, its logits export): the lite model, and W48 in the slow tier."""
    export = request.getfixturevalue(f"{request.param}_export")
    return request.param, export, export.parent / "paddle-logits"


def test_export_writes_release_format(exported):
    model, export, _ = exported
    names = sorted(p.name for p in export.iterdir())
    assert names == ["deploy.yaml", "export.json", "model.pdiparams", "model.pdiparams.info", "model.pdmodel"]
    assert (export / "deploy.yaml").read_text() == (
        "Deploy:\n  model: model.pdmodel\n  params: model.pdiparams\n  transforms:\n  - type: Normalize\n")
    # every float32 value, plus a small header per tensor
    values = MODELS[model][1]
    assert values * 4 < (export / "model.pdiparams").stat().st_size < values * 4 + 2_000_000
    record = json.loads((export / "export.json").read_text())
    assert record["weights"]["kind"] == "synthetic" and record["weights"]["seed"] == 0


def test_round_trip_paddle_inference_equals_dygraph(exported):
    """Same weights, same input: the inference model computes what our dygraph model does."""
    import paddle
    from converter.model import build_model
    from converter.runners import make_runner
    from converter.util.cache import default_cache_dir
    from converter.weights.synthetic import cached_synthetic_state_dict

    model_name, lite_export, lite_export_logits = exported
    model = build_model(19, backbone=MODELS[model_name][0])
    # the weights the export computed, from the session's cache (which verifies them)
    assert cached_synthetic_state_dict(model, 0, original_contract(), default_cache_dir())[1]
    x = _small_input()
    with paddle.no_grad():
        ref = model(paddle.to_tensor(x))[0].numpy()
    logits = make_runner("paddle", str(lite_export_logits)).infer(x)
    got = next(iter(logits.values()))
    assert got.shape == (1, 19, 256, 512) and got.dtype == np.float32
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-3 * scale
    classes = make_runner("paddle", str(lite_export)).infer(x)["argmax_0.tmp_0"]
    assert classes.shape == (1, 256, 512) and classes.dtype == np.int32
    dyn = ref.argmax(1)
    differ = classes != dyn
    assert differ.mean() < 1e-3
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    assert np.all(margin[differ] < 1e-3 * scale)  # any flip is a near-tie


def test_paddle_runner_logits_equal_the_without_argmax_export(lite_export, lite_export_logits):
    """Parity takes the original's logits from an extra fetch on the shipped
    program; they must be the --without-argmax export's logits, and the class
    map must be the plain run's, bit for bit. The artifact is left unchanged."""
    from converter.runners import make_runner
    x = _small_input()
    before = (lite_export / "model.pdmodel").read_bytes()
    both = make_runner("paddle", str(lite_export), logits=True).infer(x)
    assert sorted(both) == ["argmax_0.tmp_0", "logits"]
    assert (lite_export / "model.pdmodel").read_bytes() == before
    exported = next(iter(make_runner("paddle", str(lite_export_logits)).infer(x).values()))
    np.testing.assert_array_equal(both["logits"], exported)
    plain = make_runner("paddle", str(lite_export)).infer(x)["argmax_0.tmp_0"]
    np.testing.assert_array_equal(both["argmax_0.tmp_0"], plain)
    np.testing.assert_array_equal(plain, exported.argmax(1))


def test_paddle_runner_refuses_logits_on_a_logits_export(lite_export_logits):
    from converter.errors import StageError
    from converter.runners import make_runner
    with pytest.raises(StageError, match="arg_max"):
        make_runner("paddle", str(lite_export_logits), logits=True)


def test_residual_fusion_changes_speed_not_the_classes(lite_export):
    """The benchmark keeps Paddle's conv+add fusion pass that parity skips
    (it costs ~11 s of load); both configurations must compute the same map
    up to near-ties."""
    from converter.runners import make_runner
    x = _small_input()
    fused = make_runner("paddle", str(lite_export), logits=True, fuse_residual_add=True)
    plain = make_runner("paddle", str(lite_export), logits=True)
    assert fused.info["fuse_residual_add"] and not plain.info["fuse_residual_add"]
    a, b = fused.infer(x), plain.infer(x)
    scale = np.abs(b["logits"]).max()
    assert np.abs(a["logits"] - b["logits"]).max() <= 1e-4 * scale
    assert (a["argmax_0.tmp_0"] != b["argmax_0.tmp_0"]).mean() < 1e-4


def test_dynamic_shape_runs_at_another_size(lite_export):
    from converter.runners import make_runner
    out = make_runner("paddle", str(lite_export)).infer(np.zeros((1, 3, 128, 192), np.float32))
    assert out["argmax_0.tmp_0"].shape == (1, 128, 192)


def test_openvino_reads_the_export_directly(lite_export):
    import openvino as ov
    model = ov.convert_model(str(lite_export / "model.pdmodel"))
    assert model.inputs[0].get_partial_shape().rank.get_length() == 4
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled(np.zeros((1, 3, 64, 128), np.float32))[0]
    assert out.shape == (1, 64, 128)


def test_missing_weights_file_is_one_line_error(tmp_path):
    out = tmp_path / "o"
    proc = run_cli("export", "--weights", str(tmp_path / "nope.pdparams"), "--output", str(out))
    assert proc.returncode == 6
    assert proc.stderr.strip() == f"error: weights file not found: {tmp_path / 'nope.pdparams'} (or use auto, pretrained, synthetic)"
    assert not out.exists()


def test_pretrained_offline_fails_clearly(tmp_path):
    out = tmp_path / "o"
    proc = run_cli("export", "--weights", "pretrained", "--cache-dir", str(tmp_path / "c"), "--output", str(out))
    assert proc.returncode == 4
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the pretrained checkpoint is not available")
    assert not out.exists()


def test_unverified_local_checkpoint_is_refused_without_flag(tmp_path):
    bogus = tmp_path / "model.pdparams"
    bogus.write_bytes(b"not the checkpoint")
    proc = run_cli("export", "--weights", str(bogus), "--output", str(tmp_path / "o"))
    assert proc.returncode == 5   # a checksum or size mismatch, as for an inference model's files (docs/cli.md: exit codes)
    assert "size mismatch for model.pdparams" in proc.stderr and "--allow-unverified" in proc.stderr
