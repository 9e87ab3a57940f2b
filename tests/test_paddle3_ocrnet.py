"""The lite OCRNet as a Paddle 3 PIR export, in PaddleX's layout (slow tier).

Its weights are the lite export's synthetic weights (seed 0), saved from our
model by the project's interpreter and loaded into the same model code under
Paddle 3.3.1, then saved with paddle.jit.save (tests/paddle3_export.py). So
the legacy export (Paddle 2.6.2) and the PIR export compute the same network,
and Paddle 3 must agree with Paddle 2.6.2 on it: the PIR route keeps the
fidelity of the legacy one.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.support import LITE, ROOT, run_cli

pytestmark = pytest.mark.slow
TOOLCHAIN = os.path.join(sys.prefix, "paddle3", "bin", "python")
MAKER = os.path.join(ROOT, "tests", "paddle3_export.py")


@pytest.fixture(scope="module")
def lite_pir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lite-pir")
    state = root / "state.npz"
    proc = subprocess.run([sys.executable, MAKER, "state", LITE, str(state)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = root / "inference"
    folder.mkdir()
    proc = subprocess.run([TOOLCHAIN, "-I", MAKER, "ocrnet", "hrnet_w18_small_v1", "19", str(state), str(folder),
                           "paddlex", "argmax"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_a_paddlex_pir_export_of_the_lite_ocrnet_converts_to_passed(lite_pir, tmp_path):
    config, work = tmp_path / "lite-pir.yaml", tmp_path / "work"
    proc = run_cli("init", "--inference-model", str(lite_pir), "--output", str(config), "--input-shape",
                   "1,3,256,512")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("convert", "--config", str(config), "--workdir", str(work))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("PASSED: 4 gated backend(s)")
    manifest = json.loads((work / "MANIFEST.json").read_text())
    assert manifest["stages"]["export"]["format"] == "pir" and manifest["stages"]["export"]["changed"] == "none"
    proc = run_cli("diagnose", "--config", str(config), "--workdir", str(work), "--backend", "openvino-fp32-f32",
                   "--output", str(tmp_path / "diag"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert "no tensor over the budget" in last and int(last.split("; ")[1].split()[0]) > 200, last


def test_paddle_3_on_the_pir_export_agrees_with_paddle_2_on_the_legacy_one(lite_pir, lite_export, tmp_path):
    from converter.config import load_config
    from converter.data.images import input_contract, load_rgb, prepare, resize_rgb, sample_images
    from converter.runners import make_runner

    config = load_config(LITE)
    work = tmp_path / "paddle"
    proc = run_cli("init", "--inference-model", str(lite_pir), "--output", str(tmp_path / "c.yaml"))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("export", "--config", str(tmp_path / "c.yaml"), "--workdir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    legacy = make_runner("paddle", str(lite_export), threads=2, logits=True)
    pir = make_runner("paddle", str(work), threads=2, logits=True)
    assert legacy.info.get("format") is None and pir.info["paddle"] == "3.3.1"
    for path in sample_images():
        x = prepare(resize_rgb(load_rgb(path), 512, 256), input_contract(config, "original"))
        old, new = legacy.infer(x), pir.infer(x)
        assert (old[config.original_output.name] == new["fetch_name_0"]).mean() >= 0.9999, path
        scale = np.abs(old["logits"]).max()
        assert np.abs(old["logits"] - new["logits"]).max() / scale < 1e-4, path
