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
