"""tools/make_samples.py: the bundled samples, and labelled scenes with known truth."""
import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.support import ROOT, lite_cli

TOOLS = os.path.join(ROOT, "tools")


def _make_samples():
    sys.path.insert(0, TOOLS)
    try:
        import make_samples
    finally:
        sys.path.remove(TOOLS)
    return make_samples


def test_bundled_samples_keep_their_bytes():
    """Drawing the labels beside the images changes no image byte."""
    make_samples = _make_samples()
    for seed in (1, 2, 3):
        buf = io.BytesIO()
        make_samples.make(seed).save(buf, format="JPEG", quality=85, optimize=True)
        with open(os.path.join(ROOT, "converter", "samples", f"street_{seed}.jpg"), "rb") as fh:
            assert hashlib.sha256(buf.getvalue()).digest() == hashlib.sha256(fh.read()).digest(), seed


def test_labelled_scenes_in_the_cityscapes_layout(tmp_path, lite_build):
    root = tmp_path / "cityscapes"
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, "make_samples.py"), "--output", str(root),
                           "--seeds", "100", "101", "--split", "val"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    labels = sorted((root / "gtFine" / "val" / "synthetic").glob("*_gtFine_labelIds.png"))
    images = sorted((root / "leftImg8bit" / "val" / "synthetic").glob("*_leftImg8bit.png"))
    assert [p.name for p in images] == ["synthetic_000100_000019_leftImg8bit.png",
                                        "synthetic_000101_000019_leftImg8bit.png"]
    assert len(labels) == 2
    # The labels say what the image shows: sky blue, vegetation green, road grey, ...
    rgb = np.asarray(Image.open(images[0])).astype(int)
    ids = np.asarray(Image.open(labels[0]))
    assert ids.dtype == np.uint8 and ids.shape == rgb.shape[:2]
    sky, veg, road = (rgb[ids == v].mean(axis=0) for v in (23, 21, 7))
    assert sky[2] > sky[0] + 40 and veg[1] > veg[0] + 30 and veg[1] > veg[2] + 30
    assert abs(road[0] - road[1]) < 15 and abs(road[1] - road[2]) < 15
    assert {7, 8, 11, 21, 23, 26} <= set(np.unique(ids).tolist())
    # evaluate reads the set; it counts exactly the labelled (non-ignored) pixels.
    evaluated = set([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])
    want = sum(int(np.isin(np.asarray(Image.open(p)), list(evaluated)).sum()) for p in labels)
    proc = lite_cli("evaluate", "--cityscapes", str(root), "--workdir", str(lite_build),
                   "--output", str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["pixels"] == want


def test_prepare_feeds_each_model_what_its_contract_says():
    """Against values worked out by hand for one 1x2 image: a red pixel
    (200, 10, 0) and a blue one (0, 20, 250), mean and scale stated per RGB
    channel. The converted and the reference inputs are both built by
    prepare, so a bug shared by both would pass parity: this is its own check."""
    from converter.data.images import prepare

    rgb = np.array([[[200, 10, 0], [0, 20, 250]]], np.uint8)
    mean, scale = [100.0, 10.0, 50.0], [2.0, 5.0, 10.0]
    out = prepare(rgb, {"color": "RGB", "mean": mean, "scale": scale})
    assert out.shape == (1, 3, 1, 2) and out.dtype == np.float32 and out.flags.c_contiguous
    # R: (200-100)/2, (0-100)/2; G: (10-10)/5, (20-10)/5; B: (0-50)/10, (250-50)/10
    np.testing.assert_array_equal(out[0, :, 0, :], [[50, -50], [0, 2], [-5, 20]])
    # BGR: blue first, each channel still with its own (RGB-stated) mean and scale
    out = prepare(rgb, {"color": "BGR", "mean": mean, "scale": scale})
    np.testing.assert_array_equal(out[0, :, 0, :], [[-5, 20], [0, 2], [50, -50]])
    # the converted models' raw BGR 0..255
    out = prepare(rgb, {"color": "BGR", "mean": [0.0] * 3, "scale": [1.0] * 3})
    np.testing.assert_array_equal(out[0, :, 0, :], [[0, 250], [10, 20], [200, 0]])
    # the shipped config's normalisation: (v - 127.5) / 127.5
    out = prepare(rgb, {"color": "RGB", "mean": [127.5] * 3, "scale": [127.5] * 3})
    np.testing.assert_allclose(out[0, :, 0, 0], [72.5 / 127.5, -117.5 / 127.5, -1.0], rtol=1e-6)
