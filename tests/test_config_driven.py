"""The config drives the conversion: with another mean/scale, RGB input and
another static shape, the ONNX model and the IR compute
original((x - mean) / scale) for that config."""
import numpy as np
import pytest
import yaml

from converter.config import load_config

from tests.support import LITE, linked_build, lite_cli, lite_config

MEAN, SCALE, SHAPE = [100.0, 110.0, 120.0], [50.0, 60.0, 70.0], (1, 3, 128, 256)


@pytest.fixture(scope="module")
def modified(lite_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("modified")
    with open(LITE) as fh:
        raw = yaml.safe_load(fh)
    raw["original"]["preprocessing"] = {"mean": MEAN, "scale": SCALE}
    raw["converted"]["input"].update(color="RGB", shape=list(SHAPE))
    config_path = root / "modified.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    work = root / "w"
    linked_build(lite_export, work / "paddle")
    for stage in ("onnx", "openvino"):
        proc = lite_cli(stage, "--config", str(config_path), "--workdir", str(work))  # shape from the config
        assert proc.returncode == 0, proc.stderr
    return load_config(str(config_path)), work


def _image(seed=5):
    return np.random.default_rng(seed).integers(0, 256, (SHAPE[2], SHAPE[3], 3), dtype=np.uint8)


def _original(work, rgb):
    """The exported original on (x - mean) / scale, computed here by hand."""
    from converter.runners import make_runner
    x = (rgb.astype(np.float32).transpose(2, 0, 1)[None] - np.array(MEAN, np.float32)[None, :, None, None]) \
        / np.array(SCALE, np.float32)[None, :, None, None]
    return make_runner("paddle", str(work / "paddle"), logits=True).infer(x)


@pytest.mark.parametrize("runtime, model", [("onnxruntime", "onnx/ocrnet-lite.onnx"),
                                            ("openvino", "openvino/FP32/ocrnet-lite.xml")])
def test_converted_models_follow_the_modified_config(modified, runtime, model):
    from converter.runners import make_runner
    config, work = modified
    rgb = _image()
    want = _original(work, rgb)
    # The modified config's converted input: raw RGB, 0..255, [1, 3, 128, 256].
    x = np.ascontiguousarray(rgb.astype(np.float32).transpose(2, 0, 1)[None])
    got = make_runner(runtime, str(work / model), logits=True, precision="f32").infer(x)
    assert got["argmax_0.tmp_0"].shape == (1, 128, 256)
    err = np.abs(got["logits"] - want["logits"]).max() / np.abs(want["logits"]).max()
    assert err < 1e-3, err
    agree = (got["argmax_0.tmp_0"] == want["argmax_0.tmp_0"]).mean()
    assert agree > 0.999, agree
    # Negative control: fed as the default config's converted models are (BGR),
    # the same model computes something else.
    swapped = make_runner(runtime, str(work / model), logits=True, precision="f32").infer(
        np.ascontiguousarray(x[:, ::-1]))
    assert np.abs(swapped["logits"] - want["logits"]).max() / np.abs(want["logits"]).max() > 10 * err


def test_records_and_deploy_yaml_state_the_modified_interface(modified):
    import json
    config, work = modified
    onnx_rec = json.loads((work / "onnx" / "onnx.json").read_text())
    assert onnx_rec["input_shape"] == list(SHAPE) and onnx_rec["input"]["color"] == "RGB"
    assert onnx_rec["preprocessing"] == "Gather[0, 1, 2] axis 1, Sub [100.0, 110.0, 120.0], Div [50.0, 60.0, 70.0]"
    ov_rec = json.loads((work / "openvino" / "openvino.json").read_text())
    assert "(v - [100, 110, 120]) / [50, 60, 70]" in ov_rec["preprocessing"]
    from converter.stages.export import deploy_yaml
    text = deploy_yaml(config)
    assert "mean: [0.392157, 0.431373, 0.470588]" in text and "std: [0.196078, 0.235294, 0.27451]" in text
    assert deploy_yaml(lite_config()).endswith("- type: Normalize\n")  # the default: bare, as PaddleSeg writes it
