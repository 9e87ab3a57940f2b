"""The package works once installed: a wheel, from any directory."""
import os
import subprocess
import sys
import zipfile

import pytest

from tests.support import ROOT


@pytest.mark.slow   # a wheel built and installed into a fresh folder: 73 s
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-q", "-w", str(dist), ROOT],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = dist.glob("ocrnet_convert-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "converter/configs/ocrnet-hrnet-w48-paddle.yaml" in names
    assert {f"converter/samples/street_{i}.jpg" for i in (1, 2, 3)} <= set(names)
    assert "converter/stages/export.py" in names and not any(n.startswith("tests/") for n in names)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                           "-q", "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # The wheel's copy, not the checkout's, and from a folder that is not the checkout.
    env = dict(os.environ, PYTHONPATH=str(site), OCRNET_CONVERT_OFFLINE="1")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True, text=True,
                              cwd=elsewhere, env=env, timeout=600)
    where = subprocess.run([sys.executable, "-c", "import converter; print(converter.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    assert where.stdout.strip().startswith(str(site)), where.stdout
    assert cli("--help").returncode == 0
    fetch_help = cli("fetch", "--help")
    assert fetch_help.returncode == 0 and "--mirror" in fetch_help.stdout
    proc = cli("export", "--weights", "synthetic", "--workdir", "w")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (elsewhere / "w" / "paddle" / "model.pdiparams").is_file()
    assert (elsewhere / "w" / "paddle" / "export.json").is_file()
