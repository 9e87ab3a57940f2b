"""The suite's session: its own cache, the tiers, and every heavy build made once.

Tiers (docs/development.md): a test marked `slow` runs in `make test-slow`,
one marked `e2e` in `make test-e2e`, every other in `make test`; pyproject's
addopts select the default tier, and a test may carry at most one tier mark.
"""
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.support import (FIXTURE, LITE, ROOT, SMALL_HW, SMALL_SHAPE, W48_SHAPE, left_as_made, linked_build,
                           lite_cli, run_cli)

if not os.path.exists(FIXTURE):  # CI's clone has shared/ beside it, like the workspace
    FIXTURE = os.path.join(ROOT, "..", "shared", "fixtures", "ocrnet_hrnetw48_state_dict.json")

os.environ.setdefault("OMP_NUM_THREADS", "2")
# The test run must never reach the network for the real checkpoint.
os.environ["OCRNET_CONVERT_OFFLINE"] = "1"
# Nor the user's cache: the suite gets its own (its synthetic weights, its
# results key), removed at the end of the session. It is one for the whole
# run: the process that starts pytest makes it, and xdist's workers inherit
# the variable that names it, so that what one worker's build computed
# (seed 0's weights) is a cache hit in the other.
_UNDER_XDIST = "PYTEST_XDIST_WORKER" in os.environ   # this process is one of xdist's workers
_SUITE_CACHE = "OCRNET_CONVERT_SUITE_CACHE"
_CACHE_IS_OURS = not (_UNDER_XDIST and os.environ.get(_SUITE_CACHE))
if _CACHE_IS_OURS:
    os.environ[_SUITE_CACHE] = tempfile.mkdtemp(prefix="ocrnet-test-cache-")
os.environ["OCRNET_CONVERT_CACHE"] = os.environ[_SUITE_CACHE]

TIERS = ("slow", "e2e")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marks = [name for name in TIERS if item.get_closest_marker(name)]
        if len(marks) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(marks)}: one tier per test")


def pytest_sessionfinish(session, exitstatus):
    if _CACHE_IS_OURS:
        shutil.rmtree(os.environ[_SUITE_CACHE], ignore_errors=True)


@pytest.fixture(scope="session")
def fixture_state():
    with open(FIXTURE) as fh:
        return json.load(fh)


# --- the lite model: every mechanism is tested on it ---------------------------

def _synthetic_export(root, *config):
    """An export with synthetic weights (seed 0, dynamic shape) into root/paddle,
    its logits variant into root/paddle-logits; config: ("--config", PATH) or none."""
    proc = run_cli("export", *config, "--weights", "synthetic", "--output", str(root / "paddle"),
                   "--logits-output", str(root / "paddle-logits"))
    assert proc.returncode == 0, proc.stderr
    return root / "paddle"


# `make test` runs two xdist workers. Each used to make every session build
# for itself, a minute of the tier's CPU each for the lite build and its INT8
# IR; now the first worker that asks makes it in the run's temporary folder,
# which both workers see, and the other waits for it. Outside xdist nothing is shared.

def _session_folder(tmp_path_factory, name):
    if not _UNDER_XDIST:
        return tmp_path_factory.mktemp(name)
    return tmp_path_factory.getbasetemp().parent / name


@contextlib.contextmanager
def _first_worker_makes(tmp_path_factory, name):
    """Yields True to the one worker that must make `name` (none has made it
    yet), False to every other, which by then can use what was made."""
    if not _UNDER_XDIST:
        yield True
        return
    root = tmp_path_factory.getbasetemp().parent
    made = root / f"{name}.made"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes, or the worker dies
        must_make = not made.exists()
        yield must_make
        if must_make:   # reached only when making raised nothing
            made.touch()


def _made_once(tmp_path_factory, name, make):
    """The folder `name` of this session, made by make(folder) once."""
    folder = _session_folder(tmp_path_factory, name)
    with _first_worker_makes(tmp_path_factory, name) as must_make:
        if must_make:
            shutil.rmtree(folder, ignore_errors=True)   # what a failed attempt left
            folder.mkdir()
            make(folder)
    return folder


@pytest.fixture(scope="session")
def lite_export(tmp_path_factory):
    """The lite model exported with synthetic weights (dynamic shape); its
    logits variant lies beside it in paddle-logits/."""
    root = _made_once(tmp_path_factory, "lite", lambda folder: _synthetic_export(folder, "--config", LITE))
    return root / "paddle"


@pytest.fixture(scope="session")
def lite_export_logits(lite_export):
    return lite_export.parent / "paddle-logits"


def _lite_stages(work):
    for args in (("onnx", "--input-shape", SMALL_SHAPE), ("openvino", "--input-shape", SMALL_SHAPE),
                 ("model-api",)):
        proc = lite_cli(*args, "--workdir", str(work))
        assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="session")
def lite_build(lite_export, tmp_path_factory):
    """The lite export's folder converted to ONNX and IR at SMALL_SHAPE (1x3x128x256), with
    the IRs' Model API flavour. Tests read it (checked at the end of the
    session); one that writes works on a linked_build of it."""
    work = lite_export.parent
    with _first_worker_makes(tmp_path_factory, "lite-build") as must_make:
        if must_make:
            _lite_stages(work)
    with left_as_made(work):
        yield work


def _quantized(lite_build):
    def make(folder):
        work = linked_build(lite_build, folder / "work", link=("paddle", "onnx"))
        proc = lite_cli("quantize", "--workdir", str(work))
        assert proc.returncode == 0, proc.stderr
    return make


@pytest.fixture(scope="session")
def lite_int8(lite_build, tmp_path_factory):
    """The lite build with its INT8 IR: the suite's one NNCF run. No test may
    change it (checked at the end of the session); a test that quantizes
    again or edits the IR works on a linked_build of it."""
    with left_as_made(_made_once(tmp_path_factory, "int8", _quantized(lite_build)) / "work") as work:
        yield work


def _released(lite_build):
    def make(folder):
        # onnx and openvino as files (hard links), not symlinks: the manifest lists them
        work = linked_build(lite_build, folder / "work", link=("paddle",))
        for args in (("parity", "--images", os.path.join(ROOT, "converter", "samples", "street_2.jpg")),
                     ("manifest",)):
            proc = lite_cli(*args, "--workdir", str(work))
            assert proc.returncode == 0, proc.stdout + proc.stderr
    return make


@pytest.fixture(scope="session")
def lite_release(lite_build, tmp_path_factory):
    """The lite build with parity run (one image) and its manifest: a release.
    No test may change it (checked at the end of the session)."""
    with left_as_made(_made_once(tmp_path_factory, "release", _released(lite_build)) / "work") as work:
        yield work


def _without_reverse(lite_build):
    def make(folder):
        import openvino as ov

        from converter.stages.openvino import build_ir
        from tests.support import ir, lite_config, rerecord

        work = linked_build(lite_build, folder / "w", link=("paddle", "onnx"))
        pre = dict(lite_config().baked(), order=[0, 1, 2])
        target = ir(work)
        target.unlink()
        ir(work, ext="bin").unlink()
        ov.save_model(build_ir(str(work / "paddle" / "model.pdmodel"), (1, 3, *SMALL_HW), pre), str(target),
                      compress_to_fp16=False)
        rerecord(work / "openvino", "openvino.json", "FP32")
    return make


@pytest.fixture(scope="session")
def no_reverse_build(lite_build, tmp_path_factory):
    """The lite build whose FP32 IR lost its channel reversal (RGB fed as
    BGR), recorded as the stage's own output: a converter bug, and a gate
    that must fail. No test may change it (checked at the end of the session)."""
    with left_as_made(_made_once(tmp_path_factory, "no-reverse", _without_reverse(lite_build)) / "w") as work:
        yield work


def _paddleseg_export(op):
    def make(folder):
        proc = subprocess.run([sys.executable, "-m", "tests.paddleseg_export", str(folder / "export"), "--backbone",
                               "hrnet_w18_small_v1", "--classes", "7", "--output-op", op],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return make


@pytest.fixture(scope="session")
def paddleseg_exported(tmp_path_factory):
    """paddleseg_exported(op): an inference model of HRNet_W18_Small_V1 with 7
    classes, exported as PaddleSeg's export.py does with that output op
    (argmax, softmax or none); each made once, when first asked for. Tests
    read it; one that edits it works on a copy."""
    made = {}

    def export(op):
        if op not in made:
            made[op] = _made_once(tmp_path_factory, f"paddleseg-{op}", _paddleseg_export(op)) / "export"
        return made[op]
    return export


# --- W48, the shipped model: where its numbers or its size are the point --------

@pytest.fixture(scope="session")
def w48_export(tmp_path_factory):
    """The shipped config's W48 exported with synthetic weights (seed 0), with its logits variant."""
    return _synthetic_export(tmp_path_factory.mktemp("w48"))


@pytest.fixture(scope="session")
def w48_build(w48_export):
    """W48 converted to ONNX and IR at 1x3x256x512."""
    work = w48_export.parent
    for stage in ("onnx", "openvino"):
        proc = run_cli(stage, "--workdir", str(work), "--input-shape", W48_SHAPE)
        assert proc.returncode == 0, proc.stderr
    return work
