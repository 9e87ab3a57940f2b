"""Two builds into clean workdirs give byte-identical model files; the manifest lists them."""
import hashlib
import json

import pytest

from tests.support import LITE, LITE_NAME, SMALL_SHAPE, W48_NAME, W48_SHAPE, lite_cli, lite_command, run_cli



def model_files(name):
    return ["paddle/model.pdmodel", "paddle/model.pdiparams", "paddle/model.pdiparams.info",
            "paddle/deploy.yaml", "paddle-logits/model.pdmodel", "paddle-logits/model.pdiparams",
            f"onnx/{name}.onnx", f"openvino/FP32/{name}.xml", f"openvino/FP32/{name}.bin",
            f"openvino/FP16/{name}.xml", f"openvino/FP16/{name}.bin"]


MODEL_FILES = model_files(LITE_NAME)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _second_build(root, *config, shape=SMALL_SHAPE):
    """A build in another folder, with another thread count, from the same inputs."""
    work = root / "second build"  # a space in the path, too
    env = {"OMP_NUM_THREADS": "1"}
    proc = run_cli("export", *config, "--weights", "synthetic", "--output", str(work / "paddle"),
                   "--logits-output", str(work / "paddle-logits"), env=env)
    assert proc.returncode == 0, proc.stderr
    for stage in ("onnx", "openvino"):
        proc = run_cli(stage, *config, "--workdir", str(work), "--input-shape", shape, env=env)
        assert proc.returncode == 0, proc.stderr
    return work


@pytest.fixture(scope="module")
def second_build(tmp_path_factory):
    return _second_build(tmp_path_factory.mktemp("lite"), "--config", LITE)


def test_model_files_are_byte_identical(lite_build, second_build):
    different = [f for f in MODEL_FILES if _sha(lite_build / f) != _sha(second_build / f)]
    assert different == []


@pytest.mark.slow
def test_w48_model_files_are_byte_identical(w48_build, tmp_path):
    """The shipped model, rebuilt from scratch (its synthetic weights from the session's cache)."""
    second = _second_build(tmp_path, shape=W48_SHAPE)
    files = model_files(W48_NAME)
    assert [f for f in files if _sha(w48_build / f) != _sha(second / f)] == []


def test_manifest_lists_every_model_file_with_its_hash(second_build):
    proc = lite_cli("manifest", "--workdir", str(second_build))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((second_build / "MANIFEST.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    for rel in MODEL_FILES:
        assert listed[rel]["model_file"] and listed[rel]["sha256"] == _sha(second_build / rel)
        assert listed[rel]["size"] == (second_build / rel).stat().st_size
    assert not listed["paddle/export.json"]["model_file"]
    assert manifest["weights"]["kind"] == "synthetic" and manifest["weights"]["seed"] == 0
    from tests.support import lite_config
    assert manifest["config"]["sha256"] == lite_config().sha256
    assert manifest["stages"]["onnx"]["opset"] == 13
    assert manifest["stages"]["openvino"]["input_shape"] == [1, 3, 128, 256]
    for lib in ("python", "paddlepaddle", "paddle2onnx", "onnx", "onnxruntime", "openvino", "numpy"):
        assert manifest["versions"][lib]
    card = (second_build / "README.md").read_text()
    # 3.86 M parameters, 73.13 GFLOPs at 512x1024 (HRNet_W18_Small_V1 with 19 classes: 3.9 M, 36.6 GFLOP at 256x512)
    assert "synthetic weights (seed 0)" in card and "| MParams | 3.86 |" in card and "73.13" in card
    assert "Apache" in card


def test_unchanged_export_is_skipped(second_build):
    before = (second_build / "paddle" / "model.pdiparams").stat().st_mtime_ns
    proc = lite_cli("export", "--weights", "synthetic", "--output", str(second_build / "paddle"),
                   "--logits-output", str(second_build / "paddle-logits"))
    assert proc.returncode == 0, proc.stderr
    assert "export: up to date" in proc.stderr and "skipped" in proc.stderr
    assert (second_build / "paddle" / "model.pdiparams").stat().st_mtime_ns == before


def test_stage_skips_when_unchanged_and_force_redoes(tmp_path, lite_export):
    import os
    work = tmp_path / "w"
    work.mkdir()
    os.symlink(lite_export, work / "paddle")
    args = ("onnx", "--workdir", str(work), "--input-shape", "1,3,64,128")
    first = lite_cli(*args)
    assert first.returncode == 0 and "onnx: done" in first.stderr
    onnx_file = work / "onnx" / "ocrnet-lite.onnx"
    stamp = onnx_file.stat().st_mtime_ns
    second = lite_cli(*args)
    assert second.returncode == 0 and "onnx: up to date" in second.stderr
    assert onnx_file.stat().st_mtime_ns == stamp
    onnx_file.write_bytes(b"tampered")  # an output that no longer matches its record is redone
    third = lite_cli(*args)
    assert third.returncode == 0 and "onnx: done" in third.stderr and onnx_file.stat().st_size > 1000
    forced = lite_cli(*args, "--force")
    assert forced.returncode == 0 and "onnx: done" in forced.stderr
    other_shape = lite_cli("onnx", "--workdir", str(work), "--input-shape", "1,3,64,96")
    assert other_shape.returncode == 0 and "onnx: done" in other_shape.stderr


def test_sigkill_leaves_nothing_at_final_path_and_rerun_is_identical(tmp_path, lite_build):
    import os
    import signal
    import subprocess
    import time
    from tests.support import ROOT
    work = tmp_path / "w"
    work.mkdir()
    os.symlink(lite_build / "paddle", work / "paddle")
    proc = subprocess.Popen(lite_command("onnx", "--workdir", str(work),
                             "--input-shape", SMALL_SHAPE), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    staging = []
    while time.time() < deadline and proc.poll() is None:
        staging = [p for p in work.iterdir() if p.name.startswith(".onnx.") and p.name.endswith(".staging")]
        if staging and any(staging[0].iterdir()):
            break
        time.sleep(0.01)
    assert staging, "the stage never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "onnx" / "ocrnet-lite.onnx").exists()
    rerun = lite_cli("onnx", "--workdir", str(work), "--input-shape", SMALL_SHAPE)
    assert rerun.returncode == 0, rerun.stderr
    name = "onnx/ocrnet-lite.onnx"
    assert _sha(work / name) == _sha(lite_build / name)
    assert not [p for p in work.iterdir() if p.name.endswith(".staging")]
