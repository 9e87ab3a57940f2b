"""A user's own model: family checkpoints of other widths and class counts, and
PaddleSeg-exported inference models, through init and the whole pipeline."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.support import ROOT, run_cli
from tests.support import one_line_error

SHAPE = "1,3,128,256"   # the size of the lite build: the mechanism, at a quarter of 256x512's work
SAMPLE = os.path.join(ROOT, "converter", "samples", "street_2.jpg")


def _make_checkpoint(path, backbone, classes):
    """A member with seeded synthetic weights (tools/make_checkpoint.py), as paddle.save writes a state dict."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_checkpoint.py"), "--backbone",
                           backbone, "--classes", str(classes), "--output", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def w18_checkpoint(tmp_path_factory):
    """OCRNet-HRNet_W18 with 5 classes: random values of its shapes (init and
    the architecture check read shapes only), pickled as paddle.save does."""
    from converter.family import state_shapes

    rng = np.random.default_rng(18)
    state = {k: rng.standard_normal(v).astype(np.float32) for k, v in state_shapes("hrnet_w18", 5).items()}
    path = tmp_path_factory.mktemp("w18") / "model.pdparams"
    path.write_bytes(pickle.dumps(state, protocol=4))
    return path


def _values(backbone, classes):
    """The values in our Paddle model's state dict (independent of family.params)."""
    from converter.model import build_model
    return sum(int(np.prod(v.shape)) for v in build_model(classes, backbone=backbone).state_dict().values())


def _init(*args):
    return run_cli("init", *args)


def _convert(config, work, *extra):
    return run_cli("convert", "--config", str(config), "--workdir", str(work), "--input-shape", SHAPE,
                   "--images", SAMPLE, *extra)


@pytest.mark.parametrize("backbone", ["hrnet_w18_small_v1", pytest.param("hrnet_w18", marks=pytest.mark.slow)])
def test_a_checkpoint_of_5_classes_goes_through_init_and_convert(backbone, tmp_path):
    checkpoint = _make_checkpoint(tmp_path / "model.pdparams", backbone, 5)
    labels = tmp_path / "labels.txt"
    labels.write_text("road\nbuilding\nsky\ncar\nperson\n")
    config = tmp_path / "roads.yaml"
    proc = _init("--weights", str(checkpoint), "--output", str(config), "--labels", str(labels))
    assert proc.returncode == 0, proc.stderr
    assert f"OCRNet-{backbone}, 5 classes" in proc.stdout
    raw = yaml.safe_load(config.read_text())
    values = {"hrnet_w18": 12_112_254}.get(backbone) or _values(backbone, 5)   # W18's: the issue's count
    assert raw["model"] == {"arch": "ocrnet", "backbone": backbone, "num_classes": 5, "params": values,
                            "flops_512x1024": raw["model"]["flops_512x1024"]}
    assert [c["name"] for c in raw["classes"]] == ["road", "building", "sky", "car", "person"]
    assert raw["files"][0]["sha384"] == __import__("hashlib").sha384(checkpoint.read_bytes()).hexdigest()
    assert "published_accuracy" not in raw and "reference" not in raw
    work = tmp_path / "w"
    proc = _convert(config, work)   # --weights auto: the checkpoint where init found it, verified
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("PASSED")
    for rel in ("onnx/roads.onnx", "openvino/FP32/roads.xml", "openvino/FP16/roads.bin",
                "openvino/model_api/FP32/roads.xml"):
        assert (work / rel).is_file(), rel
    export = json.loads((work / "paddle" / "export.json").read_text())
    assert export["num_classes"] == 5 and export["weights"]["kind"] == "pretrained"
    card = (work / "README.md").read_text()
    assert card.startswith("# roads: the user's checkpoint model.pdparams") and f"OCRNet-{backbone} with 5 classes" in card
    # the shipped config (19 classes) on this build: refused in one line, before any model loads
    one_line_error(run_cli("predict", SAMPLE, "--workdir", str(work), "--output", str(tmp_path / "p")), 8,
                   "has 5 classes", "19")


def test_a_checkpoint_of_another_width_is_refused_naming_a_key(w18_checkpoint, tmp_path):
    line = one_line_error(run_cli("export", "--weights", str(w18_checkpoint), "--allow-unverified", "--output",
                                  str(tmp_path / "p")), 6, "does not fit OCRNet-hrnet_w48 with 19 classes",
                          "shape mismatch(es): backbone.", "it is OCRNet-hrnet_w18 with 5 classes")
    assert " != " in line and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_a_w48_checkpoint_of_21_classes_goes_through_init_and_convert(w48_export, tmp_path):
    """The shipped architecture with VOC's 21 classes: the seeded synthetic
    backbone and head (the session's W48 export put them in its cache), its
    two class layers drawn again for 21 classes."""
    from converter.family import state_shapes
    from converter.weights.synthetic import load_cached, synthetic_key
    from converter.config import load_config
    from converter.data.images import input_contract
    from converter.util.cache import default_cache_dir

    shapes19 = state_shapes("hrnet_w48", 19)
    state = load_cached(default_cache_dir(), synthetic_key(0, input_contract(load_config(), "original"), shapes19),
                        shapes19)
    assert state is not None, "the session's synthetic W48 weights are not in the test cache"
    rng = np.random.default_rng(21)
    for key, shape in state_shapes("hrnet_w48", 21).items():
        if tuple(state[key].shape) != shape:   # the classifiers of 21 classes
            state[key] = (rng.standard_normal(shape) * (0.05 if len(shape) > 1 else 0)).astype(np.float32)
    ckpt = tmp_path / "voc.pdparams"
    ckpt.write_bytes(pickle.dumps(state, protocol=4))
    config = tmp_path / "voc.yaml"
    proc = _init("--weights", str(ckpt), "--output", str(config), "--name", "ocrnet-voc")
    assert proc.returncode == 0 and "OCRNet-hrnet_w48, 21 classes" in proc.stdout, proc.stderr
    raw = yaml.safe_load(config.read_text())
    assert raw["model"]["params"] == 70_468_618 and len(raw["classes"]) == 21
    assert raw["classes"][1]["color"] == [128, 0, 0]   # Pascal VOC's palette
    proc = _convert(config, tmp_path / "w")
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1].startswith("PASSED"), proc.stderr[-3000:]
    assert (tmp_path / "w" / "openvino" / "FP32" / "ocrnet-voc.xml").is_file()


def test_init_refuses_what_it_cannot_vouch_for(w18_checkpoint, tmp_path):
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    one_line_error(_init("--weights", str(w18_checkpoint), "--output", str(tmp_path / "c.yaml"), "--labels",
                         str(labels)), 2, "3 names for a model of 5 classes")
    not_family = tmp_path / "other.pdparams"
    not_family.write_bytes(pickle.dumps({"conv.weight": np.zeros((4, 3, 3, 3), np.float32)}, protocol=4))
    one_line_error(_init("--weights", str(not_family), "--output", str(tmp_path / "c.yaml")), 6,
                   "not an OCRNet-HRNet of PaddleSeg release-2.3's family")
    pir = tmp_path / "pir"
    pir.mkdir()
    (pir / "model.json").write_text('{"program": {}}')
    (pir / "model.pdiparams").write_bytes(b"\0" * 16)
    # a .json that is no PIR program (a PIR program is converted: tests/test_paddle3.py)
    one_line_error(_init("--inference-model", str(pir), "--output", str(tmp_path / "c.yaml")), 8,
                   "model.json", "not a Paddle PIR program")
    assert not (tmp_path / "c.yaml").exists()


def test_a_training_config_with_base_files_is_read_locally(w18_checkpoint, tmp_path):
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "roads.yml").write_text(
        "train_dataset:\n  num_classes: 5\n  transforms:\n  - {type: RandomPaddingCrop, crop_size: [768, 768]}\n"
        "val_dataset:\n  transforms:\n  - {type: Normalize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}\n")
    train = tmp_path / "ocrnet.yml"
    train.write_text("_base_: _base_/roads.yml\nmodel:\n  type: OCRNet\n  backbone: {type: HRNet_W18}\n"
                     "  num_classes: 5\n")
    config = tmp_path / "c.yaml"
    proc = _init("--weights", str(w18_checkpoint), "--output", str(config), "--paddleseg-config", str(train))
    assert proc.returncode == 0, proc.stderr
    raw = yaml.safe_load(config.read_text())
    assert raw["converted"]["input"]["shape"] == [1, 3, 768, 768]
    assert raw["original"]["preprocessing"]["mean"] == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    train.write_text("_base_: https://example.com/evil.yml\nmodel: {type: OCRNet}\n")
    one_line_error(_init("--weights", str(w18_checkpoint), "--output", str(tmp_path / "d.yaml"),
                         "--paddleseg-config", str(train)), 2, "never fetched")
    train.write_text("_base_: ocrnet.yml\n")
    one_line_error(_init("--weights", str(w18_checkpoint), "--output", str(tmp_path / "d.yaml"),
                         "--paddleseg-config", str(train)), 2, "circle")


def _export_refuses_a_changed_copy(export, config, changed, work):
    """A copy of export with two bytes of its parameters changed after init: the export stage refuses it."""
    import shutil

    shutil.copytree(export, changed)
    with open(changed / "model.pdiparams", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x01\x02")
    one_line_error(run_cli("export", "--config", str(config), "--workdir", str(work),
                           "--inference-model", str(changed)), 5, "sha384 mismatch", "--allow-unverified")


# the default tier's 10 minutes: slow. In the default tier the pyramid-pooling
# export goes through init and convert to PASSED by the same stages, and the
# truncated-file test holds the refusal of files changed since init.
@pytest.mark.slow
@pytest.mark.parametrize("op", ["argmax", "softmax", "none"])
def test_an_exported_inference_model_goes_through_init_and_convert(paddleseg_exported, tmp_path, op):
    config = tmp_path / f"lite-{op}.yaml"
    proc = _init("--inference-model", str(paddleseg_exported(op)), "--output", str(config), "--input-shape", SHAPE)
    assert proc.returncode == 0, proc.stderr
    raw = yaml.safe_load(config.read_text())
    assert raw["model"]["arch"] == "paddle-inference" and raw["model"]["output_op"] == op
    assert raw["model"]["num_classes"] == 7 and raw["quantize"]["ignored_scope"] == "none"
    work = tmp_path / "w"
    proc = _convert(config, work)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1].startswith("PASSED"), proc.stderr[-3000:]
    export = json.loads((work / "paddle" / "export.json").read_text())
    assert export["weights"]["kind"] == "inference-model" and export["weights"]["verified"] is True
    assert ("appended" in export["weights"]["changed"]) == (op != "argmax")
    import onnx
    out = onnx.load(str(work / "onnx" / f"lite-{op}.onnx"), load_external_data=False).graph.output[0]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 128, 256]   # the class map, static
    # the user's files changed since init: refused, unless --allow-unverified
    _export_refuses_a_changed_copy(paddleseg_exported(op), config, tmp_path / "changed", tmp_path / "w2")


def test_a_truncated_parameters_file_is_refused_by_init(paddleseg_exported, tmp_path):
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(paddleseg_exported("argmax"), cut)
    data = (cut / "model.pdiparams").read_bytes()
    (cut / "model.pdiparams").write_bytes(data[: len(data) // 2])
    one_line_error(_init("--inference-model", str(cut), "--output", str(tmp_path / "c.yaml")), 8,
                   "model.pdiparams", "truncated")
    assert not (tmp_path / "c.yaml").exists()
    # the control: the whole file passes init
    config = tmp_path / "ok.yaml"
    assert _init("--inference-model", str(paddleseg_exported("argmax")), "--output", str(config)).returncode == 0
    # and a file changed after init is refused by the export stage, unless --allow-unverified
    _export_refuses_a_changed_copy(paddleseg_exported("argmax"), config, tmp_path / "changed", tmp_path / "w")
    assert not (tmp_path / "w" / "paddle").exists()


def test_a_pyramid_pooling_export_converts_through_its_static_shape(tmp_path):
    """PP-LiteSeg's context module (adaptive pools of an input of unknown
    size) crashed the onnx stage with a traceback: paddle2onnx wrote an
    AveragePool with strides 0, which strict shape inference refused. The
    stage names that op and node in one line, converts again with the
    program's input fixed to the static shape, and the model passes parity."""
    folder = tmp_path / "pooled"
    proc = subprocess.run([sys.executable, "-m", "tests.pooled_export", str(folder)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = tmp_path / "pooled.yaml"
    assert _init("--inference-model", str(folder), "--output", str(config), "--input-shape", SHAPE).returncode == 0
    proc = _convert(config, tmp_path / "w")
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1].startswith("PASSED"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # the route as exported failed where PP-LiteSeg's did, and said so in one line
    said = [ln for ln in proc.stderr.splitlines() if "converting again with the program's input fixed" in ln]
    assert len(said) == 1 and "AveragePool node" in said[0] and "strides" in said[0], proc.stderr[-2000:]
    record = json.loads((tmp_path / "w" / "onnx" / "onnx.json").read_text())
    assert record["paddle_program"] == "input fixed to [1, 3, 128, 256]"
    raw = yaml.safe_load(config.read_text())
    assert raw["model"]["arch"] == "paddle-inference" and raw["model"]["output_op"] == "argmax"
    assert raw["model"]["num_classes"] == 5
    export = json.loads((tmp_path / "w" / "paddle" / "export.json").read_text())
    assert export["weights"]["kind"] == "inference-model" and export["weights"]["verified"] is True


def test_an_onnx_shape_inference_report_becomes_one_line_naming_the_op():
    from converter.stages.onnx import _first_node_error

    report = ("[ShapeInferenceError] Inference error(s): (op_type:Relu, node name: Relu.27): [TypeInferenceError] "
              "Input 0 expected to have type but instead is null\n(op_type:AveragePool, node name: AveragePool.4): "
              "[ShapeInferenceError] Attribute strides must only contain positive values\n")
    line = _first_node_error(Exception(report))
    assert line == ("ONNX shape inference failed on paddle2onnx's output at AveragePool node 'AveragePool.4': "
                    "Attribute strides must only contain positive values (ShapeInferenceError)")
    assert "\n" not in _first_node_error(Exception("something else\nentirely"))


def test_a_file_swapped_between_its_check_and_its_copy_is_not_used(paddleseg_exported, tmp_path, monkeypatch):
    """The export stage verified the user's files, then copied them: a file
    swapped in between went into the build. The copy is what is checked now."""
    import shutil

    from converter.config import load_config
    from converter.errors import StageError
    from converter.stages import inference_model

    config_path = tmp_path / "c.yaml"
    assert _init("--inference-model", str(paddleseg_exported("argmax")), "--output", str(config_path)).returncode == 0
    config = load_config(str(config_path))
    real_copy = shutil.copyfile

    def swapping_copy(src, dst, *args, **kwargs):
        real_copy(src, dst, *args, **kwargs)
        if str(src).endswith("model.pdiparams"):   # as if the file changed just before the copy read it
            with open(dst, "r+b") as fh:
                fh.seek(100)
                fh.write(b"\xff\xfe")
    monkeypatch.setattr(inference_model.shutil, "copyfile", swapping_copy)
    with pytest.raises(StageError, match="changed while it was being copied"):
        inference_model.run(config, str(tmp_path / "w"))
    assert not (tmp_path / "w" / "paddle" / "export.json").exists()
    monkeypatch.setattr(inference_model.shutil, "copyfile", real_copy)   # the control
    inference_model.run(config, str(tmp_path / "w"))
    assert (tmp_path / "w" / "paddle" / "export.json").exists()


def test_an_exports_normalize_is_read_as_paddleseg_and_paddlex_write_it():
    from converter.commands.init_sources import _normalize
    from converter.errors import ConverterError

    assert _normalize([{"type": "Normalize"}], "y") == ([0.5] * 3, [0.5] * 3)          # PaddleSeg's defaults
    assert _normalize([{"type": "Resize", "target_size": 512}, {"type": "Normalize", "mean": 0.4, "std": 0.2}],
                      "y") == ([0.4] * 3, [0.2] * 3)                                   # one number each
    assert _normalize([{"type": "Normalize", "mean": [0, 1, 2], "std": [1, 2, 4]}], "y") == ([0, 1, 2], [1, 2, 4])
    assert _normalize([{"type": "Resize"}], "y") == (None, None)
    for bad in ({"mean": [0, 1]}, {"std": 0}, {"mean": True}, {"std": [1, 2, "3"]}):
        with pytest.raises(ConverterError, match="Normalize needs three means and three non-zero stds"):
            _normalize([dict(type="Normalize", **bad)], "y")
