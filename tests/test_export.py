"""export stage: files, format, and a round trip through Paddle Inference."""
import json

import numpy as np

from converter.images import load_rgb, normalized_rgb_nchw, resize_rgb, sample_images
from tests.conftest import run_cli


def _small_input():
    return normalized_rgb_nchw(resize_rgb(load_rgb(sample_images()[0]), 512, 256))


def test_export_writes_release_format(synthetic_export):
    names = sorted(p.name for p in synthetic_export.iterdir())
    assert names == ["deploy.yaml", "export.json", "model.pdiparams", "model.pdiparams.info", "model.pdmodel"]
    assert (synthetic_export / "deploy.yaml").read_text() == (
        "Deploy:\n  model: model.pdmodel\n  params: model.pdiparams\n  transforms:\n  - type: Normalize\n")
    # 70,466,150 float32 values, plus a small header per tensor
    assert 70466150 * 4 < (synthetic_export / "model.pdiparams").stat().st_size < 70466150 * 4 + 2_000_000
    record = json.loads((synthetic_export / "export.json").read_text())
    assert record["weights"]["kind"] == "synthetic" and record["weights"]["seed"] == 0


def test_round_trip_paddle_inference_equals_dygraph(synthetic_export, synthetic_export_logits):
    """Same weights, same input: the inference model computes what our dygraph model does."""
    import paddle
    from converter.model import build_model
    from converter.runners import make_runner
    from converter.synthetic import synthetic_state_dict

    model = build_model()
    synthetic_state_dict(model, 0)
    x = _small_input()
    with paddle.no_grad():
        ref = model(paddle.to_tensor(x))[0].numpy()
    logits = make_runner("paddle", str(synthetic_export_logits)).infer(x)
    got = next(iter(logits.values()))
    assert got.shape == (1, 19, 256, 512) and got.dtype == np.float32
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-3 * scale
    classes = make_runner("paddle", str(synthetic_export)).infer(x)["argmax_0.tmp_0"]
    assert classes.shape == (1, 256, 512) and classes.dtype == np.int32
    dyn = ref.argmax(1)
    differ = classes != dyn
    assert differ.mean() < 1e-3
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    assert np.all(margin[differ] < 1e-3 * scale)  # any flip is a near-tie


def test_dynamic_shape_runs_at_another_size(synthetic_export):
    from converter.runners import make_runner
    out = make_runner("paddle", str(synthetic_export)).infer(np.zeros((1, 3, 128, 192), np.float32))
    assert out["argmax_0.tmp_0"].shape == (1, 128, 192)


def test_openvino_reads_the_export_directly(synthetic_export):
    import openvino as ov
    model = ov.convert_model(str(synthetic_export / "model.pdmodel"))
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
    assert proc.returncode == 6
    assert "size mismatch for model.pdparams" in proc.stderr and "--allow-unverified" in proc.stderr
