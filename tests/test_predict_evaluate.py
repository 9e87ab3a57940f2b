"""predict on odd sizes and bad files; evaluate on a generated mini Cityscapes."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.support import lite_config
from converter.data.cityscapes import LABEL_TO_TRAIN, label_ids_to_train_ids
from converter.data.images import load_rgb, sample_images
from tests.support import lite_cli
from tests.labelled import TRAIN_TO_LABEL, expected as _expected, write_dataset as _write_dataset

CONFIG = lite_config()
CLASSES, PALETTE = CONFIG.class_names, np.array(CONFIG.palette, np.uint8)


def test_official_label_table():
    ids = np.array([[7, 8, 26, 33], [0, 9, 24, 255]], np.uint8)
    np.testing.assert_array_equal(label_ids_to_train_ids(ids), [[0, 1, 13, 18], [255, 255, 11, 255]])
    assert len(LABEL_TO_TRAIN) == 19 and sorted(LABEL_TO_TRAIN.values()) == list(range(19))


def _crop(h, w, index=0):
    return load_rgb(sample_images()[index])[100:100 + h, 300:300 + w]


def test_predict_odd_size_writes_three_pngs(lite_build, tmp_path):
    img = tmp_path / "odd.png"
    rgb = _crop(333, 517)
    Image.fromarray(rgb).save(img)
    out = tmp_path / "pred"
    proc = lite_cli("predict", str(img), "--backend", "onnxruntime", "--workdir", str(lite_build), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    classes = np.asarray(Image.open(out / "odd_classes.png"))
    colour = np.asarray(Image.open(out / "odd_color.png"))
    overlay = np.asarray(Image.open(out / "odd_overlay.png"))
    assert classes.shape == (333, 517) and classes.dtype == np.uint8 and classes.max() <= 18
    np.testing.assert_array_equal(colour, PALETTE[classes])
    np.testing.assert_array_equal(overlay, ((rgb.astype(np.uint16) + colour) // 2).astype(np.uint8))
    shares = {int(c): float(n) / classes.size for c, n in zip(*np.unique(classes, return_counts=True))}
    top = max(shares, key=shares.get)
    assert f"{CLASSES[top]} {shares[top]:.1%}" in proc.stdout


def test_predict_converts_grayscale_and_rgba(lite_build, tmp_path):
    Image.fromarray(_crop(64, 96)[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([_crop(64, 96), np.full((64, 96), 200, np.uint8)])).save(tmp_path / "rgba.png")
    out = tmp_path / "pred"
    proc = lite_cli("predict", str(tmp_path / "gray.png"), str(tmp_path / "rgba.png"), "--backend", "openvino-fp32-f32",
                   "--workdir", str(lite_build), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert np.asarray(Image.open(out / "gray_classes.png")).shape == (64, 96)
    assert np.asarray(Image.open(out / "rgba_classes.png")).shape == (64, 96)


def _bad_files(tmp_path):
    (tmp_path / "text.png").write_text("this is not an image")
    data = (tmp_path / "t.jpg")
    Image.fromarray(_crop(200, 300)).save(data, quality=90)
    (tmp_path / "truncated.jpg").write_bytes(data.read_bytes()[:3000])
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(tmp_path / "deep.png")
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")
    return {"text.png": "not a readable image", "truncated.jpg": "not a readable image",
            "deep.png": "16-bit or float", "bomb.png": "too large"}


def test_predict_rejects_bad_files_in_one_line(lite_build, tmp_path):
    for name, fragment in _bad_files(tmp_path).items():
        out = tmp_path / ("out_" + name)
        proc = lite_cli("predict", str(tmp_path / name), "--workdir", str(lite_build), "--output", str(out))
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / name}") and fragment in lines[0], lines
        assert not out.exists()


def test_evaluate_on_mini_cityscapes_with_known_damage(lite_build, tmp_path):
    images = {("aachen", "aachen_000000_000019"): _crop(128, 256, 0),
              ("aachen", "aachen_000001_000019"): _crop(128, 256, 1),
              ("bremen", "bremen_000000_000019"): _crop(128, 256, 2)}
    src = tmp_path / "src"
    src.mkdir()
    for (_, stem), rgb in images.items():
        Image.fromarray(rgb).save(src / f"{stem}.png")
    pred_dir = tmp_path / "pred"
    proc = lite_cli("predict", str(src), "--backend", "openvino-fp32-f32", "--workdir", str(lite_build),
                   "--output", str(pred_dir))
    assert proc.returncode == 0, proc.stderr
    predictions = {key: (rgb, np.asarray(Image.open(pred_dir / f"{key[1]}_classes.png")))
                   for key, rgb in images.items()}

    def damage(label):
        label = label.copy()
        label[10:40, 20:90] = 7       # relabel a block as road
        label[60:80, :] = 0          # unlabeled: ignored
        label[100:110, 100:140] = 9  # parking: ignored too
        label[0:5, 0:256] = 26       # a strip of car
        return label
    root = tmp_path / "cityscapes"
    _write_dataset(root, predictions, damage)
    out = tmp_path / "eval"
    # the lite model with the shipped model's published accuracy, to be compared against
    import yaml

    from converter.config import DEFAULT_CONFIG
    from tests.support import LITE
    raw = yaml.safe_load(open(LITE))
    raw["published_accuracy"] = yaml.safe_load(open(DEFAULT_CONFIG))["published_accuracy"]
    with_reference = tmp_path / "with-reference.yaml"
    with_reference.write_text(yaml.safe_dump(raw))
    proc = lite_cli("evaluate", "--config", str(with_reference), "--cityscapes", str(root), "--backend",
                    "openvino-fp32-f32", "--workdir", str(lite_build), "--output", str(out), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "metrics.json").read_text())
    preds = [p for _, p in predictions.values()]
    gts = [damage(np.vectorize(TRAIN_TO_LABEL.get)(p).astype(np.uint8)) for p in preds]
    iou, miou, accuracy = _expected(preds, gts)
    for c, name in enumerate(CLASSES):
        if iou[c] is None:
            assert result["per_class_iou"][name] is None
        else:
            assert result["per_class_iou"][name] == pytest.approx(iou[c], abs=1e-12)
    assert result["miou"] == pytest.approx(miou, abs=1e-12) and miou < 1.0
    assert result["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert result["images"] == 3
    md = (out / "metrics.md").read_text()
    assert "| train |" in md and "suspect" in md and "synthetic" in md
    # --limit 2: the first two images in sorted order, and their metrics only.
    proc = lite_cli("evaluate", "--cityscapes", str(root), "--backend", "openvino-fp32-f32", "--workdir",
                   str(lite_build), "--output", str(tmp_path / "eval2"), "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    limited = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    _, miou2, accuracy2 = _expected(preds[:2], gts[:2])
    assert limited["images"] == 2 and limited["pixels"] < result["pixels"]
    assert limited["miou"] == pytest.approx(miou2, abs=1e-12)
    assert limited["pixel_accuracy"] == pytest.approx(accuracy2, abs=1e-12)


def test_evaluate_bad_limit_and_missing_dataset(lite_build, tmp_path):
    proc = lite_cli("evaluate", "--cityscapes", str(tmp_path), "--workdir", str(lite_build),
                   "--output", str(tmp_path / "o"), "--limit", "0")
    assert proc.returncode == 2 and "--limit: must be positive" in proc.stderr
    proc = lite_cli("evaluate", "--cityscapes", str(tmp_path), "--workdir", str(lite_build),
                   "--output", str(tmp_path / "o"), "--jobs", "2")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --jobs is retired: use --workers N"
    proc = lite_cli("evaluate", "--cityscapes", str(tmp_path / "none"), "--workdir", str(lite_build),
                   "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --cityscapes {tmp_path / 'none'}: not a folder"
    (tmp_path / "empty").mkdir()
    proc = lite_cli("evaluate", "--cityscapes", str(tmp_path / "empty"), "--workdir", str(lite_build),
                   "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no images under")
    assert not (tmp_path / "o").exists()
