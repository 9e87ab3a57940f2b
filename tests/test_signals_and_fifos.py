"""Hostile use, third pass: SIGTERM once paddle is loaded, and FIFOs where a
file is read. Each case failed before its fix (docs/hardening.md)."""
import os
import signal
import subprocess
import time

import pytest

from tests.support import LITE, ROOT, SAMPLES, lite_command, one_line_error, run_cli

SAMPLE = os.path.join(SAMPLES, "street_1.jpg")


def _entries(folder):
    """What is in folder, the workdir's lock file aside (it stays, as after any run)."""
    return sorted(p for p in folder.rglob("*") if p.name != ".ocrnet-convert.lock") if folder.exists() else []


def _terminate(argv, after, cwd=ROOT):
    """Start argv, SIGTERM it `after` seconds later (or when it has ended); (returncode, stdout, stderr, wait s)."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        pass
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)   # within 30 s, or the test fails (and kills it)
    return proc.returncode, out, err, time.time() - start


# every sample image: work enough that the signal comes while the run is busy
COMMANDS = {
    "diagnose": lambda work, out: ("diagnose", "--workdir", str(work), "--backend", "openvino-fp32-f32",
                                   "--output", str(out), "--images", SAMPLES),
    "parity": lambda work, out: ("parity", "--workdir", str(work), "--images", SAMPLES),
    "validate": lambda work, out: ("validate", "--workdir", str(work), "--images", SAMPLES, "--output", str(out)),
    "convert": lambda work, out: ("convert", "--weights", "synthetic", "--workdir", str(work), "--input-shape",
                                  "1,3,256,512", "--images", SAMPLE),
}


@pytest.mark.parametrize("after", [2, 5])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_sigterm_under_paddle_exits_143_and_leaves_nothing(lite_build, tmp_path, command, after):
    """Paddle's C++ handler took SIGTERM over: the process died by the signal
    (-15) with a C++ traceback on stdout, or hung in malloc. At any moment of
    a run: exit 143, one error line, no traceback, no staging or partial
    output, no worker left."""
    import psutil

    work = tmp_path / "w"
    if command != "convert":
        work.mkdir()
        for name in ("paddle", "onnx", "openvino"):
            os.symlink(lite_build / name, work / name)
    out = tmp_path / "out"
    before = _entries(work)
    code, stdout, stderr, seconds = _terminate(lite_command(*COMMANDS[command](work, out)), after)
    if code == 0:
        pytest.fail(f"{command} finished within {after} s: the signal came too late to test anything")
    assert code == 143, (code, stderr[-2000:])
    assert stderr.strip().splitlines()[-1] == "error: terminated" and "Traceback" not in stderr, stderr[-2000:]
    assert "C++" not in stdout + stderr
    assert not [p for p in _entries(work) if ".staging" in p.name or p.name.endswith(".tmp")]
    if command != "convert":
        assert _entries(work) == before or all(p.parent.name == "parity" or p.name == "parity"
                                               for p in set(_entries(work)) - set(before))
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(work) in " ".join(p.info["cmdline"] or [])]


def _checkpoint(path):
    """A lite-model checkpoint of random weights, pickled as paddle.save does (init reads shapes only)."""
    import pickle

    import numpy as np

    from converter.family import state_shapes
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(v).astype(np.float32) for k, v in state_shapes("hrnet_w18_small_v1", 19).items()}
    path.write_bytes(pickle.dumps(state, protocol=4))
    return path


def test_a_fifo_as_any_outside_file_is_refused_at_once(tmp_path):
    """read_limited opened before it looked: a FIFO as --config (every
    command), --labels, --paddleseg-config or a _base_ hung until killed."""
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    one_line_error(run_cli("fetch", "--config", str(fifo), "--output", str(tmp_path / "o"), timeout=60), 3,
                   "not a regular file")
    ckpt = _checkpoint(tmp_path / "ck.pdparams")
    train = tmp_path / "train.yml"
    train.write_text("_base_: pipe.yaml\nmodel: {type: OCRNet, num_classes: 19}\n")
    for extra in (("--labels", str(fifo)), ("--paddleseg-config", str(fifo)), ("--paddleseg-config", str(train))):
        proc = run_cli("init", "--weights", str(ckpt), "--output", str(tmp_path / "c.yaml"), *extra, timeout=60)
        line = one_line_error(proc, 2, "pipe.yaml")
        assert "regular file" in line, line
        assert not (tmp_path / "c.yaml").exists()
    # the control: the same init with a readable labels file writes its config
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"c{i}\n" for i in range(19)))
    assert run_cli("init", "--weights", str(ckpt), "--output", str(tmp_path / "c.yaml"), "--labels",
                   str(labels)).returncode == 0


def test_a_fifo_or_folder_as_the_results_key_is_one_line(lite_build, tmp_path):
    """A FIFO named results.key hung validate; a folder gave 'Is a directory: 4' (a file descriptor)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    key = cache / "results.key"
    for make, why in ((os.mkfifo, "not a regular file"), (os.mkdir, "a folder, not a file")):
        make(key)
        proc = run_cli("validate", "--config", LITE, "--workdir", str(lite_build), "--images", SAMPLE, "--output",
                       str(tmp_path / "o"), "--backends", "openvino-fp32-f32",
                       env={"OCRNET_CONVERT_CACHE": str(cache)}, timeout=120)
        line = one_line_error(proc, 2, "results.key", why)
        assert ": 4" not in line
        (os.rmdir if key.is_dir() else os.unlink)(key)


def test_a_signal_inside_an_extensions_import_is_still_the_signal():
    """SIGTERM while a C extension initialised (onnxruntime's, during
    convert's export) came out as "ImportError: initialization failed" with
    a traceback, exit 1; a converter error can wrap that again (from None)."""
    from converter.cli import Terminated, _interruption
    from converter.errors import StageError

    def wrapped():
        try:
            try:
                raise Terminated()
            except Terminated as signal_exc:
                raise ImportError("initialization failed") from signal_exc
        except ImportError:
            raise StageError("paddle2onnx 1.3.1 failed: initialization failed") from None
    with pytest.raises(StageError) as err:
        wrapped()
    assert isinstance(_interruption(err.value), Terminated)
    assert _interruption(StageError("a plain failure")) is None   # the control


def test_main_puts_back_the_callers_sigterm_handler_and_as_the_program_ignores_late_signals():
    """In-process (argv given) main restores the caller's SIGTERM handler on
    every way out; as the program (argv None) it leaves SIGTERM and SIGINT
    ignored, so that a signal during interpreter teardown cannot turn the
    run's exit code into death by the signal. The `finally` that does both
    was once lost in an edit, unnoticed by the signal tests' timing."""
    import sys
    from unittest import mock

    from converter.cli import main

    def mine(signum, frame):
        pass
    previous = signal.signal(signal.SIGTERM, mine)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        assert main(["fetch", "--config", os.path.join(ROOT, "no-such.yaml")]) == 3  # an error's way out
        assert signal.getsignal(signal.SIGTERM) is mine
        with mock.patch.object(sys, "argv", ["ocrnet-convert", "fetch", "--config", "/no-such.yaml"]):
            assert main() == 3
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
