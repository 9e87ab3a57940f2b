import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "ocrnet_hrnetw48_state_dict.json")
if not os.path.exists(FIXTURE):  # CI's clone has shared/ beside it, like the workspace
    FIXTURE = os.path.join(ROOT, "..", "shared", "fixtures", "ocrnet_hrnetw48_state_dict.json")

os.environ.setdefault("OMP_NUM_THREADS", "2")
# The test run must never reach the network for the real checkpoint.
os.environ["OCRNET_CONVERT_OFFLINE"] = "1"
# Nor the user's cache: the suite gets its own (its synthetic weights, its
# results key), removed at the end of the session.
_CACHE = tempfile.mkdtemp(prefix="ocrnet-test-cache-")
os.environ["OCRNET_CONVERT_CACHE"] = _CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def fixture_state():
    with open(FIXTURE) as fh:
        return json.load(fh)


def run_cli(*args, env=None, timeout=900, cwd=None):
    """Run `python -m converter ...` in a subprocess; return CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or ROOT)


@pytest.fixture(scope="session")
def synthetic_export(tmp_path_factory):
    """One synthetic-weights export (dynamic shape), shared by the suite; the
    logits variant lies beside it in paddle-logits/."""
    root = tmp_path_factory.mktemp("export")
    proc = run_cli("export", "--weights", "synthetic", "--output", str(root / "paddle"),
                   "--logits-output", str(root / "paddle-logits"))
    assert proc.returncode == 0, proc.stderr
    return root / "paddle"


@pytest.fixture(scope="session")
def synthetic_export_logits(synthetic_export):
    return synthetic_export.parent / "paddle-logits"


SMALL_SHAPE = "1,3,256,512"


@pytest.fixture(scope="session")
def small_workdir(synthetic_export):
    """The export's folder converted to ONNX and IR at 1x3x256x512, with the
    IRs' Model API flavour."""
    work = synthetic_export.parent
    for args in (("onnx", "--input-shape", SMALL_SHAPE), ("openvino", "--input-shape", SMALL_SHAPE), ("model-api",)):
        proc = run_cli(*args, "--workdir", str(work))
        assert proc.returncode == 0, proc.stderr
    return work


INT8_TILE = "128x256"


@pytest.fixture(scope="session")
def int8_workdir(small_workdir, tmp_path_factory):
    """A copy of the small build with the INT8 IR (the shared build stays without it)."""
    work = tmp_path_factory.mktemp("int8") / "work"
    work.mkdir()
    for name in ("paddle", "onnx"):
        os.symlink(small_workdir / name, work / name)
    shutil.copytree(small_workdir / "openvino", work / "openvino")
    proc = run_cli("quantize", "--workdir", str(work), "--calibration-tile", INT8_TILE)
    assert proc.returncode == 0, proc.stderr
    return work


@pytest.fixture(scope="session")
def release_build(small_workdir, tmp_path_factory):
    """A copy of the small build with parity run (one image) and its manifest."""
    work = tmp_path_factory.mktemp("release") / "work"
    work.mkdir()
    os.symlink(small_workdir / "paddle", work / "paddle")
    for name in ("onnx", "openvino"):   # packaged: real files, so that the manifest lists them
        shutil.copytree(small_workdir / name, work / name)
    for args in (("parity", "--images", os.path.join(ROOT, "converter", "samples", "street_2.jpg")), ("manifest",)):
        proc = run_cli(*args, "--workdir", str(work))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return work


def original_input(rgb):
    """The original model's input for an RGB image, per the default config."""
    from converter.config import load_config
    from converter.data.images import input_contract, prepare
    return prepare(rgb, input_contract(load_config(), "original"))


def converted_input(rgb):
    """The converted models' input (raw BGR 0..255), per the default config."""
    from converter.config import load_config
    from converter.data.images import input_contract, prepare
    return prepare(rgb, input_contract(load_config(), "converted"))


def default_contract():
    from converter.config import load_config
    from converter.data.images import input_contract
    return input_contract(load_config(), "original")
