"""Hostile and careless use: tampered artifacts, poisoned caches, bad records,
planted symlinks and FIFOs, interrupted and concurrent runs, full disks.

Every case asserts a one-line `error:` and its exit code, and that nothing
was left at a final path; each guard has a control that passes untouched."""
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from converter.config import DEFAULT_CONFIG
from tests.support import (LITE, ROOT, SAMPLES, SMALL_SHAPE, linked_build, lite_cli, lite_command, one_line_error,
                           replace_file)


@pytest.fixture
def workdir(lite_build, tmp_path):
    """The lite build (export, onnx, openvino at 128x256) as a linked_build of
    its own: tests change a model file only through replace_file, which breaks the link."""
    work = tmp_path / "w"
    work.mkdir()
    for name in ("paddle", "onnx", "openvino"):
        linked_build(lite_build / name, work / name)
    return work


def _flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    replace_file(path, bytes(data))


# --- chain of custody: each stage checks its inputs ---------------------------

@pytest.mark.parametrize("command", [
    ("onnx", "--input-shape", SMALL_SHAPE, "--force"),
    ("openvino", "--input-shape", SMALL_SHAPE, "--force"),
    ("parity",),
    ("predict", os.path.join(ROOT, "converter", "samples", "street_1.jpg"), "--backend", "paddle"),
    ("bench", "--runs", "1", "--backends", "paddle"),
    ("manifest",),
])
def test_tampered_paddle_weights_are_refused_by_every_later_stage(workdir, tmp_path, command):
    _flip_byte(workdir / "paddle" / "model.pdiparams")
    extra = ("--output", str(tmp_path / "pred")) if command[0] == "predict" else ()
    proc = lite_cli(command[0], "--workdir", str(workdir), *command[1:], *extra)
    one_line_error(proc, 8, "model.pdiparams", "sha256")
    assert not (workdir / "MANIFEST.json").exists() and not (tmp_path / "pred").exists()


def test_tampered_ir_is_refused_and_untampered_copy_is_not(workdir, tmp_path):
    sample = os.path.join(ROOT, "converter", "samples", "street_1.jpg")
    ok = lite_cli("predict", sample, "--workdir", str(workdir), "--output", str(tmp_path / "a"))
    assert ok.returncode == 0, ok.stderr  # control
    _flip_byte(workdir / "openvino" / "FP16" / "ocrnet-lite.bin")
    proc = lite_cli("predict", sample, "--workdir", str(workdir), "--output", str(tmp_path / "b"))
    one_line_error(proc, 8, "FP16", "ocrnet-lite.bin")


@pytest.mark.parametrize("content, fragment", [
    ("[1, 2, 3]", "expected a JSON object, got list"),
    ("{}", "not a openvino record"),
    ("not json at all", "not a valid JSON record"),
    ('{"stage": "openvino", "files": {"FP32": {"../../etc/passwd": {"size": 1, "sha256": "' + "0" * 64 + '"}}}}',
     "not a plain file name"),
    ('{"stage": "openvino", "files": {"FP32": {"x.xml": {"size": "big"}}}}', "integer size"),
])
def test_corrupt_stage_records_are_one_line_errors(workdir, tmp_path, content, fragment):
    (workdir / "openvino" / "openvino.json").write_text(content)
    for command in (("predict", os.path.join(ROOT, "converter", "samples", "street_1.jpg"),
                     "--output", str(tmp_path / "p")), ("manifest",), ("parity",)):
        one_line_error(lite_cli(command[0], "--workdir", str(workdir), *command[1:]), 8, "openvino.json", fragment)


def test_corrupt_export_record_is_refused_by_onnx(workdir):
    (workdir / "paddle" / "export.json").write_text('["stage", "export"]')
    one_line_error(lite_cli("onnx", "--workdir", str(workdir), "--input-shape", SMALL_SHAPE), 8,
                   "export.json", "expected a JSON object")


def test_garbage_model_with_a_matching_record_is_a_one_line_error(workdir, tmp_path):
    """A record rewritten to match a truncated IR: the loader's own failure
    is still one line (predict in-process, bench in a worker)."""
    from converter.util.fsutil import describe_files
    folder = workdir / "openvino" / "FP32"
    binary = folder / "ocrnet-lite.bin"
    replace_file(binary, binary.read_bytes()[:1000])
    record = json.loads((workdir / "openvino" / "openvino.json").read_text())
    record["files"]["FP32"] = describe_files(str(folder), list(record["files"]["FP32"]))
    (workdir / "openvino" / "openvino.json").write_text(json.dumps(record))
    sample = os.path.join(ROOT, "converter", "samples", "street_1.jpg")
    one_line_error(lite_cli("predict", sample, "--workdir", str(workdir), "--output", str(tmp_path / "p")), 8,
                   "ocrnet-lite")
    one_line_error(lite_cli("bench", "--workdir", str(workdir), "--runs", "1", "--backends", "openvino-fp32-f32"),
                   8, "openvino-fp32-f32 backend failed")


def test_manifest_refuses_a_folder_without_a_build(tmp_path):
    one_line_error(lite_cli("manifest", "--workdir", str(tmp_path)), 8, "holds no build")
    assert not (tmp_path / "MANIFEST.json").exists()


def test_manifest_skips_fifos_and_hidden_staging(workdir):
    os.mkfifo(workdir / "onnx" / "trap.onnx")
    (workdir / ".paddle.1.x.staging").mkdir()
    (workdir / ".paddle.1.x.staging" / "half.bin").write_bytes(b"x")
    proc = lite_cli("manifest", "--workdir", str(workdir), timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = [f["path"] for f in json.loads((workdir / "MANIFEST.json").read_text())["files"]]
    assert "onnx/ocrnet-lite.onnx" in listed
    assert not any("trap" in p or "staging" in p for p in listed)


# --- interrupted and concurrent runs -----------------------------------------

def _children(pid):
    import psutil
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _start_parity(workdir, tmp, images):
    """parity on 24 images: long enough (over ten seconds at 128x256) that a
    signal sent once its worker is up lands mid-run even on a loaded machine;
    on the 3 samples the run could be over first (a late signal is ignored
    by design, cli.main)."""
    images.mkdir()
    for i in range(8):
        for name in ("street_1.jpg", "street_2.jpg", "street_3.jpg"):
            os.symlink(os.path.join(SAMPLES, name), images / f"{i}-{name}")
    env = dict(os.environ, TMPDIR=str(tmp))
    # as from a terminal: SIGINT at its default action whatever this test
    # process inherited (an ignored SIGINT is inherited across exec, and a
    # program started with SIGINT ignored keeps ignoring it, by convention)
    return subprocess.Popen(lite_command("parity", "--workdir", str(workdir), "--images", str(images)),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_masks(pid):
    """SigIgn, SigBlk and SigCgt of a process, for a failure message."""
    with open(f"/proc/{pid}/status") as fh:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in fh) if k in ("SigIgn", "SigBlk", "SigCgt")}


def _cmdline(process):
    import psutil
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # gone, or a zombie between fork and exec
        return ""


def _wait_for_worker(proc, deadline=120):
    end = time.time() + deadline
    while time.time() < end:
        # parity's workers: the validate engine's processes
        workers = [c for c in _children(proc.pid) if "multiprocessing.spawn" in _cmdline(c)]
        if workers:
            return workers[0]
        time.sleep(0.2)
    raise AssertionError("no parity worker started")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopping_parity_stops_its_worker_and_leaves_no_temporary_files(workdir, tmp_path, sig, code):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _start_parity(workdir, tmp, tmp_path / "images")
    worker = _wait_for_worker(proc)
    assert worker.is_running()   # the control: it was there to be stopped
    masks = _signal_masks(proc.pid)
    assert int(masks["SigCgt"], 16) & (1 << (sig - 1)), masks   # parity handles the signal
    proc.send_signal(sig)  # to the parent only, as `kill` or a supervisor does
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        masks = _signal_masks(proc.pid)
        proc.kill()
        proc.communicate()
        raise AssertionError(f"parity went on after the signal; its masks then: {masks}") from None
    assert '"done": 24' not in err, "the run was over before the signal: nothing was tested"
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith("error: ")
    end = time.time() + 15
    while time.time() < end and _alive(worker):
        time.sleep(0.2)
    assert not _alive(worker), "the worker outlived the interrupted parent"
    assert list(tmp.iterdir()) == []


def test_sigkill_of_parity_takes_its_worker_down(workdir, tmp_path):
    proc = _start_parity(workdir, tmp_path, tmp_path / "images")
    worker = _wait_for_worker(proc)
    assert worker.is_running()   # the control: there is a worker to take down
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    end = time.time() + 15
    while time.time() < end and _alive(worker):
        time.sleep(0.2)
    survived = _alive(worker)
    if survived:
        worker.kill()
    assert not survived, "the worker outlived its SIGKILLed parent"


def _alive(process):
    """Running, as opposed to gone or a zombie: an orphan that died stays a
    zombie where nothing reaps it (a container whose init does not)."""
    import psutil
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_two_runs_on_one_workdir_wait_for_each_other(workdir):
    # parity holds the workdir for many seconds: the second run, which loads paddle before it
    # asks for the lock, finds it taken (onnx --force on the lite model was over before that)
    first = subprocess.Popen(lite_command("parity", "--workdir", str(workdir), "--images",
                                          os.path.join(ROOT, "converter", "samples", "street_1.jpg")), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = workdir / ".ocrnet-convert.lock"
    end = time.time() + 60
    while time.time() < end and not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        time.sleep(0.1)
    second = lite_cli("onnx", "--workdir", str(workdir), "--input-shape", SMALL_SHAPE)
    first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert f"waiting for another ocrnet-convert run on {workdir} (pid {first.pid})" in second.stderr
    assert "up to date" in second.stderr  # and then found the build as the first run left it


def test_only_stale_staging_folders_are_removed(tmp_path):
    from converter.util.fsutil import staging_dir
    final = tmp_path / "onnx"
    dead = tmp_path / ".onnx.999999999.abc.staging"
    live = tmp_path / f".onnx.{os.getpid()}.def.staging"
    dead.mkdir()
    live.mkdir()
    with staging_dir(str(final)) as tmp:
        (open(os.path.join(tmp, "f"), "w")).close()
    assert not dead.exists() and live.exists() and (final / "f").exists()


def test_an_interrupted_publication_leaves_no_record_beside_its_files(tmp_path, monkeypatch):
    """Kill between two files of a multi-file stage: the record is gone, so
    every reader refuses the mix instead of using it."""
    from converter.util import fsutil
    from converter.errors import StageError
    from converter.records import verified_record
    out = tmp_path / "openvino"
    for precision in ("FP32", "FP16"):
        (out / precision).mkdir(parents=True)
        (out / precision / "m.xml").write_text(f"old {precision}")
    from converter.records import StageRecord, write_record
    files = {p: fsutil.describe_files(str(out / p), ["m.xml"]) for p in ("FP32", "FP16")}
    write_record(str(out), StageRecord("openvino", files))
    assert verified_record(str(tmp_path), "openvino")  # control: consistent
    real_replace, moved = os.replace, []

    def dying_replace(src, dst):
        if moved:
            raise KeyboardInterrupt  # the second file: as if killed here
        moved.append(dst)
        real_replace(src, dst)
    with pytest.raises(KeyboardInterrupt):
        with fsutil.staging_dir(str(out), record="openvino.json") as tmp:
            for precision in ("FP16", "FP32"):
                os.makedirs(os.path.join(tmp, precision))
                with open(os.path.join(tmp, precision, "m.xml"), "w") as fh:
                    fh.write(f"new {precision}")
            monkeypatch.setattr(os, "replace", dying_replace)
    monkeypatch.setattr(os, "replace", real_replace)
    assert {(out / p / "m.xml").read_text() for p in ("FP32", "FP16")} == {"new FP16", "old FP32"}
    with pytest.raises(StageError, match="missing .*openvino.json"):
        verified_record(str(tmp_path), "openvino")


# --- inputs --------------------------------------------------------------------

def test_parity_judges_two_images_with_one_file_name(workdir, tmp_path):
    from tests.support import lite_config
    from converter.stages.parity import run_parity
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copy(os.path.join(ROOT, "converter", "samples", "street_1.jpg"), a / "scene.jpg")
    shutil.copy(os.path.join(ROOT, "converter", "samples", "street_2.jpg"), b / "scene.jpg")
    _, record = run_parity(lite_config(), str(workdir), images=[str(a / "scene.jpg"), str(b / "scene.jpg")],
                           backends=["onnxruntime"])
    keys = sorted(record["results"]["onnxruntime"]["images"])
    assert len(keys) == 2 and all(k.startswith("scene~") for k in keys)
    pngs = sorted(p.name for p in (workdir / "parity").glob("scene*.png"))
    assert len(pngs) == 2


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from converter.data.images import load_rgb
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    img.save(tmp_path / "plain.jpg", quality=95)
    assert load_rgb(str(tmp_path / "plain.jpg")).shape == (20, 40, 3)  # control
    rotated = load_rgb(str(tmp_path / "rot.jpg"))
    assert rotated.shape == (40, 20, 3)
    assert rotated[2, 10, 2] > 200 and rotated[-3, 10, 0] > 200  # blue band now on top


def _png16(path, rgb16):
    import struct
    import zlib
    h, w = rgb16.shape[:2]
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_rgb_png_is_refused_not_truncated(tmp_path):
    from converter.errors import ConverterError
    from converter.data.images import load_rgb
    _png16(tmp_path / "deep.png", np.full((4, 5, 3), 40000, np.uint16))
    with pytest.raises(ConverterError, match="16-bit"):
        load_rgb(str(tmp_path / "deep.png"))


def test_fifos_are_skipped_in_folders_and_refused_as_files(tmp_path):
    from converter.errors import ConverterError
    from converter.data.images import expand_image_args, load_rgb
    shutil.copy(os.path.join(ROOT, "converter", "samples", "street_1.jpg"), tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "b.jpg")
    assert expand_image_args([str(tmp_path)]) == [str(tmp_path / "a.jpg")]
    with pytest.raises(ConverterError, match="not a regular file"):
        expand_image_args([str(tmp_path / "b.jpg")])
    with pytest.raises(ConverterError, match="not a regular file"):
        load_rgb(str(tmp_path / "b.jpg"))


# --- config --------------------------------------------------------------------

def _config_with(tmp_path, edit):
    with open(DEFAULT_CONFIG) as fh:
        raw = yaml.safe_load(fh)
    edit(raw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["parity"].update(tie_margin=float("nan")), "parity.tie_margin"),
    (lambda r: r["parity"].update(tie_margin=float("inf")), "parity.tie_margin"),
    (lambda r: r["parity"].update(tie_margin=-0.5), "parity.tie_margin"),
    (lambda r: r["parity"].update(min_agreement=float("nan")), "parity.min_agreement"),
    (lambda r: r["parity"].update(min_agreement=1.5), "parity.min_agreement"),
    (lambda r: r["files"][1].update(name=".."), "files[1].name"),
    (lambda r: r["files"][0].update(name="."), "files[0].name"),
])
def test_config_values_out_of_range_are_refused(tmp_path, edit, field):
    proc = lite_cli("fetch", "--config", _config_with(tmp_path, edit), "--output", str(tmp_path / "o"))
    one_line_error(proc, 3, field)


# --- command-line values -----------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (("parity", "--threads", "-2"), "--threads"),
    (("predict", "x.jpg", "--threads", "0"), "--threads"),
    (("fetch", "--read-timeout", "-1"), "--read-timeout"),
    (("fetch", "--connect-timeout", "nan"), "--connect-timeout"),
    (("fetch", "--retries", "-1"), "--retries"),
])
def test_negative_threads_and_timeouts_are_refused(args, fragment):
    proc = lite_cli(*args)
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("mirror", ["http://127.0.0.1:99999/x", "http://[::1/x", "http://127.0.0.1:port/",
                                    "ftp://127.0.0.1/x", "http:///nohost"])
def test_malformed_mirror_urls_are_one_line_errors(tmp_path, mirror):
    proc = lite_cli("fetch", "--mirror", mirror, "--output", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"))
    one_line_error(proc, 4, "malformed URL")


def test_output_naming_an_existing_file_is_refused(tmp_path):
    target = tmp_path / "taken"
    target.write_text("mine")
    for args in (("export", "--weights", "synthetic", "--output", str(target)),
                 ("predict", "x.jpg", "--output", str(target)),
                 ("fetch", "--output", str(target), "--from", str(tmp_path))):
        one_line_error(lite_cli(*args), 2, str(target), "not a folder")
    assert target.read_text() == "mine"


# --- the cache and fetch's files -------------------------------------------------

def _tiny_checkpoint_config(tmp_path, data):
    def edit(raw):
        raw["files"] = [dict(raw["files"][0], size=len(data), sha384=hashlib.sha384(data).hexdigest())]
    return _config_with(tmp_path, edit)


def test_a_poisoned_cache_entry_is_deleted_and_reported(tmp_path):
    good = pickle.dumps({"a": np.zeros(4, np.float32)}, protocol=4)
    config = _tiny_checkpoint_config(tmp_path, good)
    digest = hashlib.sha384(good).hexdigest()
    entry = tmp_path / "cache" / "sha384" / digest[:2] / digest
    entry.parent.mkdir(parents=True)
    entry.write_bytes(good.replace(b"\x00\x00\x00\x00", b"\x00\x00\x80\x7f", 1))  # same size, a NaN
    out = tmp_path / "w"
    proc = lite_cli("export", "--config", config, "--weights", "auto", "--cache-dir", str(tmp_path / "cache"),
                   "--workdir", str(out))
    one_line_error(proc, 5, "cached checkpoint", "corrupt", "deleted")
    assert not entry.exists() and not (out / "paddle").exists()
    # Control: the genuine entry is used (and then found not to fit the model).
    entry.write_bytes(good)
    proc = lite_cli("export", "--config", config, "--weights", "auto", "--cache-dir", str(tmp_path / "cache"),
                   "--workdir", str(out))
    one_line_error(proc, 6, "does not fit")


def test_fetched_file_and_cache_entry_are_separate_copies(tmp_path):
    data = b"checkpoint bytes " * 100
    config = _tiny_checkpoint_config(tmp_path, data)
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.pdparams").write_bytes(data)
    proc = lite_cli("fetch", "--config", config, "--from", str(src), "--output", str(tmp_path / "out"),
                   "--cache-dir", str(tmp_path / "cache"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    digest = hashlib.sha384(data).hexdigest()
    cached, fetched = tmp_path / "cache" / "sha384" / digest[:2] / digest, tmp_path / "out" / "model.pdparams"
    assert os.stat(cached).st_ino != os.stat(fetched).st_ino and os.stat(cached).st_nlink == 1
    with open(fetched, "r+b") as fh:  # the user edits their copy in place
        fh.write(b"X")
    assert cached.read_bytes() == data


def test_a_planted_part_symlink_does_not_redirect_the_write(tmp_path):
    data = b"checkpoint bytes " * 100
    config = _tiny_checkpoint_config(tmp_path, data)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    (src / "model.pdparams").write_bytes(data)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, out / "model.pdparams.part")
    proc = lite_cli("fetch", "--config", config, "--from", str(src), "--output", str(out),
                   "--cache-dir", str(tmp_path / "cache"), "--quiet")
    one_line_error(proc, 4, "symbolic link")
    assert victim.read_bytes() == b"precious" and not (out / "model.pdparams").exists()


def test_export_key_uses_the_bytes_of_the_file_not_the_config_claim(tmp_path):
    from tests.support import lite_config
    from converter.stages.export import export_key
    from converter.stages.weights import resolve_weights
    config = lite_config()
    first, second = tmp_path / "a.pdparams", tmp_path / "b.pdparams"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    choices = [resolve_weights(config, str(p), allow_unverified=True) for p in (first, second)]
    assert choices[0].provenance["sha384"] == hashlib.sha384(b"one").hexdigest()
    assert choices[0].provenance["verified"] is False
    assert export_key(config, choices[0], False) != export_key(config, choices[1], False)


def test_records_are_typed_and_versioned(workdir):
    from converter.errors import StageError
    from converter.records import RECORD_SCHEMA, StageRecord, read_record
    record = read_record(str(workdir), "onnx")
    assert isinstance(record, StageRecord) and record.input_shape == (1, 3, 128, 256)
    path = workdir / "onnx" / "onnx.json"
    raw = json.loads(path.read_text())
    assert raw["schema"] == RECORD_SCHEMA
    for field, value, fragment in (("schema", "ocrnet-convert/record/1", "not a record of this version"),
                                   ("weights", [1], "'weights' has the wrong type"),
                                   ("seconds", "fast", "'seconds' has the wrong type"),
                                   ("input_shape", [1, 3, "256", 512], "'input_shape' must be four")):
        path.write_text(json.dumps(dict(raw, **{field: value})))
        with pytest.raises(StageError, match=fragment):
            read_record(str(workdir), "onnx")


@pytest.mark.parametrize("report", ['{"passed": true}', '{"passed": true, "results": {"x": 1}, "thresholds": {},'
                                    ' "input_size": [1, 2], "images": []}', '[]'])
def test_manifest_refuses_a_malformed_parity_report(workdir, report):
    (workdir / "parity").mkdir()
    (workdir / "parity" / "report.json").write_text(report)
    one_line_error(lite_cli("manifest", "--workdir", str(workdir)), 8, "report.json")
    assert not (workdir / "MANIFEST.json").exists()


def test_a_config_that_never_ends_or_is_huge_is_refused(tmp_path):
    """--config /dev/zero was read to the end: the process was OOM-killed."""
    one_line_error(lite_cli("onnx", "--config", "/dev/zero", "--workdir", str(tmp_path / "w"), timeout=60), 3,
                   "not a regular file")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * 200_000)
    one_line_error(lite_cli("onnx", "--config", str(big), "--workdir", str(tmp_path / "w"), timeout=60), 3,
                   "larger than any config")


PADDLE_LOADED = """
import sys
from converter.cli import main
code = main(sys.argv[1:])
print(code, "paddle" in sys.modules)
"""


def test_a_bad_config_is_refused_before_paddle_loads(tmp_path):
    """A command that loads paddle in its own process (onnx here) imported it
    first, so that each refusal of its config took the import's 2.5 s."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    for config, code, loaded in ((str(bad), "3", "False"), (LITE, "8", "True")):   # the control: a good config
        proc = subprocess.run([sys.executable, "-c", PADDLE_LOADED, "onnx", "--config", config, "--workdir",
                               str(tmp_path / "w")], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.stdout.split() == [code, loaded], (config, proc.stdout, proc.stderr[-2000:])


def test_a_reader_creates_no_workdir(tmp_path):
    missing = tmp_path / "nothing-here"
    proc = lite_cli("predict", os.path.join(ROOT, "converter", "samples", "street_1.jpg"), "--workdir", str(missing),
                   "--output", str(tmp_path / "p"))
    one_line_error(proc, 8, "missing")
    assert not missing.exists()
