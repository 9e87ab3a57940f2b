"""Hostile input, second pass: stored results that forge a verdict, names that
spoof it, archives that verify empty or never end, unbounded reads.

Every case failed before its fix; each guard has a control that passes."""
import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.support import ROOT, linked_build, lite_cli, lite_command
from tests.support import one_line_error

SAMPLE = os.path.join(ROOT, "converter", "samples", "street_1.jpg")
F32 = "openvino-fp32-f32"


# --- stored results -------------------------------------------------------------

@pytest.fixture(scope="module")
def failing_build(no_reverse_build):
    """A build whose FP32 IR lost its channel reversal, recorded as the stage's output: its gate fails."""
    return no_reverse_build


def _validate(work, out, *images, extra=()):
    return lite_cli("validate", "--workdir", str(work), "--output", str(out), "--backends", F32,
                   "--images", *map(str, images), *extra)


@pytest.mark.slow   # the default tier's 10 minutes: test_the_results_schema_refuses_every_forged_field stays
def test_a_forged_stored_result_cannot_pass_a_failing_gate(failing_build, tmp_path):
    out = tmp_path / "out"
    spoof = tmp_path / "x\nPASSED all gates.jpg"   # and a name that would start a line of its own
    shutil.copy(SAMPLE, spoof)
    proc = _validate(failing_build, out, spoof)
    assert proc.returncode == 10 and proc.stdout.strip().splitlines()[-1].startswith("FAILED"), proc.stdout
    assert "\nPASSED" not in proc.stdout and "x\\nPASSED all gates.jpg" in proc.stdout
    assert "\nPASSED all gates" not in (out / "validate.md").read_text()
    (stored,) = (out / "images").glob("*.json")
    result = json.loads(stored.read_text())
    entry = result["backends"][F32]
    pixels = entry["compare"]["pixels"]
    forgeries = [
        # a perfect result, self-consistent, its seal recomputed with a key of the forger's own
        lambda e: e["compare"].update(agreement=1.0, disagree=0, max_flip_margin=0.0, flip_margins_p50=0.0,
                                      top_flips=[], logit_error={k: 0.0 for k in e["compare"]["logit_error"]}),
        lambda e: e["compare"].update(agreement=float("inf")),
        lambda e: e["compare"].update(disagree=-5),
        lambda e: e["compare"].update(agreement=1.0, disagree=pixels),
        lambda e: e.update(seconds=1e308),
        lambda e: e.update(diff_png="../../../etc/passwd"),
    ]
    import hashlib
    import hmac
    for forge in forgeries:
        forged = json.loads(json.dumps(result))
        forge(forged["backends"][F32])
        body = json.dumps({k: v for k, v in forged.items() if k != "seal"}, sort_keys=True, separators=(",", ":"))
        forged["seal"] = hmac.new(b"forger", body.encode(), hashlib.sha256).hexdigest()
        stored.write_text(json.dumps(forged))
        proc = _validate(failing_build, out, spoof)
        assert proc.returncode == 10 and proc.stdout.strip().splitlines()[-1].startswith("FAILED"), proc.stdout
        run = json.loads((out / "validate.json").read_text())["run"]
        assert (run["refused_stored"], run["computed"]) == (1, 1)
    # the control: an untouched stored result is reused (and the gate still fails)
    proc = _validate(failing_build, out, spoof)
    run = json.loads((out / "validate.json").read_text())["run"]
    assert proc.returncode == 10 and (run["reused"], run["refused_stored"]) == (1, 0)


@pytest.fixture(scope="module")
def stored_validation(lite_build, tmp_path_factory):
    """validate's output folder for SAMPLE on the lite build: one sealed stored result."""
    out = tmp_path_factory.mktemp("validated") / "out"
    proc = _validate(lite_build, out, SAMPLE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _stored_copy(stored_validation, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(stored_validation, out)
    return out


def test_unsealed_results_are_trusted_only_when_asked_and_recorded(lite_build, stored_validation, tmp_path):
    out = _stored_copy(stored_validation, tmp_path)
    (stored,) = (out / "images").glob("*.json")
    result = json.loads(stored.read_text())
    result["seal"] = "0" * 64   # another machine's seal
    stored.write_text(json.dumps(result))
    proc = _validate(lite_build, out, SAMPLE, extra=("--trust-unsealed",))
    doc = json.loads((out / "validate.json").read_text())
    assert proc.returncode == 0 and doc["run"]["reused"] == 1 and doc["run"]["trust_unsealed"] is True
    assert "unsealed results trusted" in (out / "validate.md").read_text()
    proc = _validate(lite_build, out, SAMPLE)
    assert json.loads((out / "validate.json").read_text())["run"]["refused_stored"] == 1


def test_a_moved_dataset_is_reused_and_reported_under_its_new_names(lite_build, stored_validation, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    shutil.copy(SAMPLE, first / "scene.jpg")
    out = _stored_copy(stored_validation, tmp_path)   # computed for SAMPLE under its own name
    shutil.move(first, second)
    os.rename(second / "scene.jpg", second / "renamed.jpg")
    proc = _validate(lite_build, out, second)
    doc = json.loads((out / "validate.json").read_text())
    assert proc.returncode == 0 and doc["run"]["reused"] == 1 and doc["images"] == ["renamed.jpg"]


def test_a_fifo_at_a_stored_results_path_is_recomputed_not_waited_on(lite_build, stored_validation, tmp_path):
    out = _stored_copy(stored_validation, tmp_path)
    (stored,) = (out / "images").glob("*.json")
    stored.unlink()
    os.mkfifo(stored)
    proc = lite_cli("validate", "--workdir", str(lite_build), "--output", str(out), "--backends", F32,
                   "--images", SAMPLE, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "validate.json").read_text())["run"]["computed"] == 1


def test_the_results_schema_refuses_every_forged_field():
    """Each field of a sealed result, broken on its own (the unit view of the CLI test above)."""
    from converter.engine import results

    num, size = 3, [4, 2]
    conf = [[6, 1, 0], [0, 1, 0], [0, 0, 0]]
    compare = {"pixels": 8, "disagree": 1, "agreement": 7 / 8, "max_flip_margin": 0.25, "flip_margins_p50": 0.25,
               "top_flips": [{"from": 0, "to": 1, "count": 1}], "class_iou": {"0": 6 / 7, "1": 0.5},
               "mean_iou": 0.7, "logit_error": {"abs_max": 0.5, "abs_mean": 0.1, "abs_p99": 0.4, "rel_max": 0.25,
                                                "rel_mean": 0.05, "rel_p99": 0.2, "ref_abs_max": 2.0,
                                                "ref_nonfinite": 0, "got_nonfinite": 0}}
    good = {"schema": results.RESULT_SCHEMA, "key": "k", "sha256": "s", "label_sha256": None, "size": size,
            "reference": {"name": "paddle", "seconds": 1.0, "conf_gt": None},
            "backends": {"b": {"seconds": 1.0, "compare_seconds": 0.1, "precision": "f32", "conf_gt": None,
                               "compare": compare, "conf_ref": conf}}}
    expect = {"sha256": "s", "label_sha256": None, "size": size, "reference": "paddle", "backends": ["b"],
              "num_classes": num}
    secret = b"s" * 32
    assert results.usable(results.seal(good, secret), "k", expect, secret)[0] is not None   # the control

    def broken(path, value):
        bad = json.loads(json.dumps(good))
        target = bad
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
        return bad
    for path, value in [(("backends", "b", "compare", "agreement"), 1.0),
                        (("backends", "b", "compare", "disagree"), 8),
                        (("backends", "b", "compare", "logit_error", "rel_max"), 0.0),
                        (("backends", "b", "compare", "logit_error", "got_nonfinite"), 25),   # > 8 px x 3 classes
                        (("backends", "b", "compare", "logit_error", "ref_nonfinite"), -1),
                        (("backends", "b", "compare", "class_iou", "7"), 0.5),
                        (("backends", "b", "compare", "top_flips"), [{"from": 0, "to": 1, "count": 5}]),
                        (("backends", "b", "conf_ref"), [[7, 0, 0], [0, 1, 0], [0, 0, 0]]),
                        (("backends", "b", "seconds"), -1.0), (("backends", "b", "precision"), "fp64"),
                        (("backends", "b", "diff_png"), "../x.png"), (("size",), [8, 1]),
                        (("reference", "seconds"), float("nan")), (("backends", "b", "compare", "logit_error"), {})]:
        bad = results.seal(broken(path, value), secret) if value == value else broken(path, value)
        assert results.usable(bad, "k", expect, secret)[0] is None, path
    assert results.usable(dict(good, seal="0" * 64), "k", expect, secret)[0] is None   # unsealed
    assert results.usable(dict(good, seal="0" * 64), "k", expect, secret, trust_unsealed=True)[0] is not None


# --- inputs checked on the driver ----------------------------------------------------

def test_bad_labels_and_bombs_are_refused_before_any_model_loads(lite_build, tmp_path):
    root = tmp_path / "set"
    img_dir, gt_dir = root / "leftImg8bit" / "val" / "c", root / "gtFine" / "val" / "c"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(img_dir / "a_leftImg8bit.png")
    # a 16-bit labelIds PNG holding 65287 (-249 as int16), which a cast to uint8 would make 7, road
    Image.fromarray(np.full((32, 64), 65287, np.uint16)).save(gt_dir / "a_gtFine_labelIds.png")
    proc = lite_cli("validate", "--workdir", str(lite_build), "--cityscapes", str(root), "--output",
                   str(tmp_path / "o"), "--backends", F32)
    line = one_line_error(proc, 2, "a_gtFine_labelIds.png", "outside 0..255")
    assert '{"event"' not in proc.stderr, line   # nothing started
    Image.fromarray(np.full((16, 64), 7, np.uint8)).save(gt_dir / "a_gtFine_labelIds.png")   # another size
    one_line_error(lite_cli("validate", "--workdir", str(lite_build), "--cityscapes", str(root), "--output",
                           str(tmp_path / "o"), "--backends", F32), 2, "a_gtFine_labelIds.png", "64x16")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)
    one_line_error(_validate(lite_build, tmp_path / "o", bomb), 2, "bomb.png", "too large")
    cut = tmp_path / "cut.png"
    Image.new("RGB", (64, 32), (90, 120, 30)).save(cut)
    cut.write_bytes(cut.read_bytes()[:60])
    proc = _validate(lite_build, tmp_path / "o", cut)
    one_line_error(proc, 2, "cut.png")
    assert '{"event"' not in proc.stderr


def test_a_config_of_another_class_count_is_refused_by_every_reader(lite_build, tmp_path):
    import yaml

    from tests.support import LITE

    for classes in (18, 20):
        raw = yaml.safe_load(open(LITE))
        raw["model"]["num_classes"] = classes
        raw["model"].pop("params")
        raw["model"].pop("flops_512x1024")
        raw["classes"] = [dict(c) for c in (raw["classes"] * 2)[:classes]]
        for i, c in enumerate(raw["classes"]):
            c["name"] = f"c{i}"
        config = tmp_path / f"c{classes}.yaml"
        config.write_text(yaml.safe_dump(raw))
        for args in (("validate", "--images", SAMPLE, "--output", str(tmp_path / "o")),
                     ("predict", SAMPLE, "--output", str(tmp_path / "p"))):
            one_line_error(lite_cli(args[0], "--config", str(config), "--workdir", str(lite_build), *args[1:]),
                           8, "has 19 classes", str(classes))


def test_unprintable_class_names_and_huge_static_shapes_are_refused(tmp_path):
    import yaml

    from tests.support import LITE

    for field, change in (("classes[3].name", lambda r: r["classes"][3].update(name="wall\x1b[2J")),
                          ("converted.input.shape", lambda r: r["converted"]["input"].update(
                              shape=[1, 3, 8192, 8192]))):
        raw = yaml.safe_load(open(LITE))
        change(raw)
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
        one_line_error(lite_cli("fetch", "--config", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "o")), 3,
                       field)
    control = yaml.safe_load(open(LITE))
    control["converted"]["input"]["shape"] = [1, 3, 2048, 4096]   # 8 megapixels: allowed
    from converter.config import validate
    validate(control)
    proc = lite_cli("onnx", "--workdir", str(tmp_path / "none"), "--input-shape", "1,3,8192,8192")
    assert proc.returncode == 2 and "megapixels" in proc.stderr


def test_non_finite_normalisation_and_an_alias_bomb_are_config_errors(tmp_path):
    import yaml

    from tests.support import LITE

    raw = yaml.safe_load(open(LITE))
    raw["original"]["preprocessing"]["scale"] = [127.5, float("inf"), 127.5]
    (tmp_path / "inf.yaml").write_text(yaml.safe_dump(raw))
    one_line_error(lite_cli("fetch", "--config", str(tmp_path / "inf.yaml"), "--output", str(tmp_path / "o")), 3,
                   "original.preprocessing.scale")
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]'] + [
        f'{c}: &{c} [' + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines + ["files: *i", "name: *i"]) + "\n")
    start = time.time()
    one_line_error(lite_cli("fetch", "--config", str(tmp_path / "bomb.yaml"), "--output", str(tmp_path / "o"),
                           timeout=60), 3)
    assert time.time() - start < 30


# --- the Ray address --------------------------------------------------------------

def _server(reply):
    """A TCP server on loopback that accepts, optionally replies, and holds the line."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    held = []

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            held.append(conn)
            if reply:
                conn.sendall(reply)
    threading.Thread(target=serve, daemon=True).start()
    return sock


@pytest.mark.parametrize("reply", [b"", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"], ids=["silent", "http1"])
def test_a_port_that_is_not_ray_is_one_line_at_once(lite_build, tmp_path, reply):
    sock = _server(reply)
    try:
        start = time.time()
        proc = lite_cli("validate", "--workdir", str(lite_build), "--output", str(tmp_path / "o"), "--images",
                       SAMPLE, "--executor", "ray", "--ray-address", f"127.0.0.1:{sock.getsockname()[1]}",
                       timeout=120)
        one_line_error(proc, 2, "Ray")
        assert time.time() - start < 40
    finally:
        sock.close()


def test_malformed_ray_addresses_are_refused_even_when_nothing_is_computed(lite_build, stored_validation, tmp_path):
    out = _stored_copy(stored_validation, tmp_path)
    for address in ("a" * 300 + ":6379", "nonsense", "host:99999"):
        proc = _validate(lite_build, out, SAMPLE, extra=("--executor", "ray", "--ray-address", address))
        one_line_error(proc, 2, "expected HOST:PORT")


# --- package --verify -------------------------------------------------------------

def _tar(members, gz=True):
    """A .tar.gz of (TarInfo, bytes or None) as given."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(out.getvalue(), mtime=0) if gz else out.getvalue()


def _file(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _verify(tmp_path, data, timeout=120):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(data)
    start = time.time()
    proc = lite_cli("package", "--verify", str(path), timeout=timeout)
    return proc, time.time() - start


def test_an_archive_of_an_empty_sha256sums_does_not_verify(tmp_path):
    proc, _ = _verify(tmp_path, _tar([_file("rel/SHA256SUMS", b"")]))
    one_line_error(proc, 5, "no MANIFEST.json")


def test_a_path_that_is_both_a_file_and_a_folder_does_not_verify(tmp_path):
    folder = tarfile.TarInfo("rel/NOTICE")
    folder.type = tarfile.DIRTYPE
    proc, _ = _verify(tmp_path, _tar([_file("rel/NOTICE", b"x"), (folder, None)]))
    one_line_error(proc, 5, "also a file")


def _member(info, data=b""):
    """One tar member, header and data (padded), as raw bytes."""
    return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def test_declared_sizes_are_checked_before_anything_is_read(tmp_path):
    """A sparse member, a model file declaring 6 GiB (its MANIFEST.json says
    so too) or 1 TiB, a GNU long name of a gigabyte: refused from their
    headers, in seconds, never read or hashed."""
    sparse = tarfile.TarInfo("rel/onnx/m.onnx")
    sparse.type = tarfile.GNUTYPE_SPARSE
    manifest = json.dumps({"files": [{"path": "onnx/m.onnx", "size": 6 << 30, "sha256": "0" * 64}]}).encode()
    listed = tarfile.TarInfo("rel/MANIFEST.json")
    listed.size = len(manifest)
    big, huge = tarfile.TarInfo("rel/onnx/m.onnx"), tarfile.TarInfo("rel/onnx/m.onnx")
    big.size, huge.size = 6 << 30, 1 << 40
    name = tarfile.TarInfo("././@LongLink")
    name.type, name.size = tarfile.GNUTYPE_LONGNAME, 1 << 30
    end = b"\0" * 1024
    for raw, fragment in [(_member(sparse) + end, "type"),
                          (_member(listed, manifest) + big.tobuf(tarfile.GNU_FORMAT) + end, "more than a release"),
                          (_member(listed, manifest) + huge.tobuf(tarfile.GNU_FORMAT) + end, "base-256"),
                          (name.tobuf(tarfile.GNU_FORMAT) + end, "long name")]:
        proc, seconds = _verify(tmp_path, gzip.compress(raw, mtime=0))
        one_line_error(proc, 5, fragment)
        assert seconds < 30


def test_a_gzip_bomb_is_stopped_at_the_first_bad_header(tmp_path):
    """4 GiB of zeros inflate from a few MB: the first all-zero header ends the
    archive, which then lacks its members; nothing reads on for minutes."""
    comp = gzip.GzipFile(fileobj=(buf := io.BytesIO()), mode="wb", mtime=0)
    chunk = b"\0" * (1 << 20)
    for _ in range(1024):
        comp.write(chunk)
    comp.close()
    proc, seconds = _verify(tmp_path, buf.getvalue())
    one_line_error(proc, 5)
    assert seconds < 30


def test_a_deeply_nested_manifest_is_one_line(tmp_path):
    manifest = b"[" * 100000 + b"]" * 100000
    proc, _ = _verify(tmp_path, _tar([_file("rel/MANIFEST.json", manifest)]))
    one_line_error(proc, 5, "MANIFEST.json is not a manifest")


# --- package layouts ----------------------------------------------------------------

def test_packaging_replaces_stale_layouts_refuses_links_and_is_all_or_nothing(lite_release, tmp_path):
    dist = tmp_path / "dist"
    stale = dist / "ovms" / "models" / "ocrnet-lite-int8" / "1"
    stale.mkdir(parents=True)
    (stale / "model.xml").write_text("stale")
    assert lite_cli("package", "--workdir", str(lite_release), "--output", str(dist)).returncode == 0
    assert not stale.exists()
    shutil.move(str(dist / "omz"), str(tmp_path / "elsewhere"))
    os.symlink(tmp_path / "elsewhere", dist / "omz")
    one_line_error(lite_cli("package", "--workdir", str(lite_release), "--output", str(dist)), 8, "symbolic link")
    os.unlink(dist / "omz")
    # SIGTERM while it packages: dist is as it was, and no staging is left
    before = sorted(p.name for p in dist.iterdir())
    proc = subprocess.Popen(lite_command("package", "--workdir", str(lite_release),
                             "--output", str(dist)), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not [p for p in dist.iterdir() if p.name.startswith(".package.")]:
        time.sleep(0.05)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert sorted(p.name for p in dist.iterdir()) == [n for n in before if n != "omz"]


# --- smaller messages ---------------------------------------------------------------

def test_a_folder_at_an_output_path_is_named(lite_build, tmp_path):
    out = tmp_path / "pred"
    (out / "street_1_classes.png").mkdir(parents=True)
    line = one_line_error(lite_cli("predict", SAMPLE, "--workdir", str(lite_build), "--output", str(out)), 11,
                          "street_1_classes.png")
    assert ".tmp" not in line
    assert sorted(p.name for p in out.iterdir()) == ["street_1_classes.png"]   # no _color/_overlay beside it


def test_evaluate_on_labels_that_are_all_ignored(lite_build, tmp_path):
    root = tmp_path / "set"
    for sub, data in (("leftImg8bit", np.zeros((32, 64, 3), np.uint8)), ("gtFine", np.zeros((32, 64), np.uint8))):
        folder = root / sub / "val" / "c"
        folder.mkdir(parents=True)
        name = "a_leftImg8bit.png" if sub == "leftImg8bit" else "a_gtFine_labelIds.png"
        Image.fromarray(data).save(folder / name)
    proc = lite_cli("evaluate", "--cityscapes", str(root), "--workdir", str(lite_build), "--output",
                   str(tmp_path / "e"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["miou"] is None
    assert "every label was ignored" in (tmp_path / "e" / "metrics.md").read_text()


def test_the_crash_hook_is_gone_from_the_tool(lite_build, tmp_path):
    marker = tmp_path / "link"
    os.symlink(tmp_path / "target", marker)   # a dangling link: once followed, it made a file over there
    proc = lite_cli("validate", "--workdir", str(lite_build), "--output", str(tmp_path / "o"), "--backends", F32,
                   "--images", SAMPLE, env={"OCRNET_VALIDATE_CRASH_ONCE": str(marker)})
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "target").exists()
    for folder, _, files in os.walk(os.path.join(ROOT, "converter")):
        for name in files:
            if name.endswith(".py"):
                assert "CRASH_ONCE" not in open(os.path.join(folder, name)).read(), name


def test_a_tampered_int8_build_is_an_error_not_left_out(lite_int8, tmp_path):
    work = linked_build(lite_int8, tmp_path / "w", link=("paddle", "onnx"), copy=("openvino/INT8/ocrnet-lite.xml",))
    xml = work / "openvino" / "INT8" / "ocrnet-lite.xml"
    xml.write_bytes(xml.read_bytes().replace(b"<net ", b"<net  ", 1))
    line = one_line_error(lite_cli("parity", "--workdir", str(work), "--images", SAMPLE), 8, "INT8")
    assert "refusing to use it" in line and "quantize" in line, line
