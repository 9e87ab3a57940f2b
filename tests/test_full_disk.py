"""A full disk in every stage that writes: one `error:` line (exit 11) and
nothing half-written at a final path. The disk is a small tmpfs, filled to
a few KiB of free space after the stage's inputs are copied onto it."""
import contextlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.support import ROOT, SMALL_SHAPE, lite_cli
from tests.support import one_line_error


@contextlib.contextmanager
def full_disk(path, inputs=None, margin=16 << 10):
    """Mount a tmpfs at path, copy `inputs` (a build folder) onto it, then
    fill it up to `margin` free bytes."""
    path.mkdir(parents=True, exist_ok=True)
    need = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(inputs) for f in fs) if inputs else 0
    size = need + (32 << 20)
    if os.geteuid() != 0:
        pytest.skip("not root: mounting a small tmpfs needs root (CI runs as root), so the full-disk cases "
                    "were not run")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
    if mount.returncode:
        pytest.fail(f"running as root, but a tmpfs cannot be mounted at {path}: "
                    f"{(mount.stderr or mount.stdout).strip()[:300]}")
    try:
        if inputs:
            for entry in os.listdir(inputs):
                src = os.path.join(inputs, entry)
                (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, path / entry)
        free = shutil.disk_usage(path).free - margin
        with open(path / ".filler", "wb") as fh:
            fh.truncate(0)
            chunk = b"\0" * (1 << 20)
            while free > 0:
                fh.write(chunk[: min(free, len(chunk))])
                free -= len(chunk)
        assert shutil.disk_usage(path).free <= margin + (64 << 10)  # control: the disk really is full
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _finals(folder):
    """Files outside hidden entries: what a reader would take as artifacts."""
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, dirs, fs in os.walk(folder)
                  for f in fs if not f.startswith(".") and not any(p.startswith(".") for p in
                                                                   os.path.relpath(d, folder).split(os.sep)))


@pytest.fixture(scope="module")
def fitting_checkpoint(tmp_path_factory):
    """Random float32 weights for every parameter of the lite model, pickled as paddle.save does."""
    import pickle

    from converter.family import state_shapes
    rng = np.random.default_rng(3)
    state = {name: rng.standard_normal(shape).astype(np.float32)
             for name, shape in state_shapes("hrnet_w18_small_v1", 19).items()}
    state = {k: np.abs(v) if k.endswith("._variance") else v for k, v in state.items()}   # variances are >= 0
    path = tmp_path_factory.mktemp("ckpt") / "model.pdparams"
    with open(path, "wb") as fh:
        pickle.dump(state, fh, protocol=4)
    return path


def test_export_on_a_full_disk(tmp_path, fitting_checkpoint):
    with full_disk(tmp_path / "disk") as disk:
        proc = lite_cli("export", "--weights", str(fitting_checkpoint), "--allow-unverified",
                       "--workdir", str(disk))
        one_line_error(proc, 11, "disk full")
        assert _finals(disk) == []


@pytest.mark.parametrize("stage", ["onnx", "openvino"])
def test_conversion_on_a_full_disk(tmp_path, lite_build, stage):
    src = tmp_path / "src"
    shutil.copytree(lite_build / "paddle", src / "paddle")
    with full_disk(tmp_path / "disk", src) as disk:
        proc = lite_cli(stage, "--workdir", str(disk), "--input-shape", SMALL_SHAPE)
        one_line_error(proc, 11, "disk full")
        assert _finals(disk) == _finals(src)


def test_parity_on_a_full_disk(tmp_path, lite_build):
    with full_disk(tmp_path / "disk", lite_build) as disk:
        proc = lite_cli("parity", "--workdir", str(disk), "--images",
                       os.path.join(ROOT, "converter", "samples", "street_1.jpg"))
        one_line_error(proc, 11, "disk full")
        assert not (disk / "parity" / "report.json").exists()
        for name in _finals(disk / "parity") if (disk / "parity").exists() else []:
            assert name.endswith(".png")  # each one whole: written atomically or not at all
            from PIL import Image
            Image.open(disk / "parity" / name).load()


def test_manifest_on_a_full_disk(tmp_path, lite_build):
    with full_disk(tmp_path / "disk", lite_build, margin=1024) as disk:
        proc = lite_cli("manifest", "--workdir", str(disk))
        one_line_error(proc, 11, "disk full")
        if (disk / "MANIFEST.json").exists():
            json.loads((disk / "MANIFEST.json").read_text())  # whole, if there at all
        assert not (disk / "MANIFEST.json").exists() or (disk / "README.md").exists()
