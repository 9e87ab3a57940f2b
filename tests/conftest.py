import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "ocrnet_hrnetw48_state_dict.json")
if not os.path.exists(FIXTURE):  # CI's clone has shared/ beside it, like the workspace
    FIXTURE = os.path.join(ROOT, "..", "shared", "fixtures", "ocrnet_hrnetw48_state_dict.json")

os.environ.setdefault("OMP_NUM_THREADS", "2")
# The test run must never reach the network for the real checkpoint.
os.environ["OCRNET_CONVERT_OFFLINE"] = "1"


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
    """One synthetic-weights export (dynamic shape), shared by the suite."""
    out = tmp_path_factory.mktemp("export") / "paddle"
    proc = run_cli("export", "--weights", "synthetic", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def synthetic_export_logits(tmp_path_factory):
    out = tmp_path_factory.mktemp("export_logits") / "paddle"
    proc = run_cli("export", "--weights", "synthetic", "--without-argmax", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return out
