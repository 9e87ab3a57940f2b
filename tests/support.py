"""What the tests share: running the CLI, the lite model, linked builds, and
the assertions and edits that several test modules make.

Test modules import from here (never from each other or from conftest), so
that any one of them runs alone."""
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "ocrnet_hrnetw48_state_dict.json")

# The lite model (tests/configs/ocrnet-lite.yaml): OCRNet + HRNet_W18_Small_V1,
# 19 classes, synthetic weights. Every test of a mechanism runs on it.
LITE = os.path.join(ROOT, "tests", "configs", "ocrnet-lite.yaml")
LITE_NAME = "ocrnet-lite"
# The shipped config's artifact stem (W48), for the tests of its numbers.
W48_NAME = "ocrnet-hrnet-w48-paddle"

SMALL_SHAPE = "1,3,128,256"   # the lite build's input (tests/configs/ocrnet-lite.yaml says why)
SMALL_HW = tuple(int(v) for v in SMALL_SHAPE.split(",")[2:])   # (height, width)
W48_SHAPE = "1,3,256,512"     # the slow tier's W48 build
INT8_TILE = "64x128"   # the lite config's calibration tile: 4 tiles per 128x256 input, 12 from the samples
SAMPLES = os.path.join(ROOT, "converter", "samples")


def run_cli(*args, env=None, timeout=900, cwd=None):
    """Run `python -m converter ...` in a subprocess; return CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or ROOT)


def lite_cli(command, *args, **kwargs):
    """run_cli of one command with the lite model's config."""
    return run_cli(command, "--config", LITE, *args, **kwargs)


def lite_config():
    from converter.config import load_config
    return load_config(LITE)


def ir(work, precision="FP32", name=LITE_NAME, ext="xml"):
    """The IR of one precision in a workdir (a pathlib.Path)."""
    return work / "openvino" / precision / f"{name}.{ext}"


# --- builds a test may change ---------------------------------------------------

LINK_ABOVE = 1 << 20


def linked_build(src, dst, copy=(), link=()):
    """A workdir at dst made from the build at src, cheaply.

    Folders named in `link` become symlinks to src's (read-only use). Of the
    rest, files over 1 MB are hard links to src's and smaller files (records,
    reports) copies; files and folders named in `copy` (paths relative to
    src) are real copies, for a test that edits them in place. A test edits
    any other model file only by replacing it (a new inode: replace_file,
    save_over), which leaves src untouched."""
    src, dst = str(src), str(dst)
    copied = {os.path.normpath(p) for p in copy}
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if name in link:
            os.symlink(os.path.join(src, name), os.path.join(dst, name))
            continue
        _place(src, dst, name, copied)
    return pathlib.Path(dst)


def _place(src_root, dst_root, rel, copied):
    src, dst = os.path.join(src_root, rel), os.path.join(dst_root, rel)
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    elif os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
        for name in sorted(os.listdir(src)):
            _place(src_root, dst_root, os.path.join(rel, name), copied)
    elif _is_copied(rel, copied) or os.path.getsize(src) <= LINK_ABOVE:
        shutil.copy2(src, dst)
    else:
        os.link(src, dst)


def _is_copied(rel, copied):
    rel = os.path.normpath(rel)
    return any(rel == c or rel.startswith(c + os.sep) for c in copied)


def replace_file(path, data):
    """New bytes under path, as a new file (never through a shared inode)."""
    path.unlink()
    path.write_bytes(data)


def save_over(model, xml):
    """Save an OpenVINO model beside xml, then rename over it: a new inode
    (the build it came from keeps its files), and the old .bin, memory-mapped
    by the model just read, is never written in place (that is a SIGBUS)."""
    import openvino as ov

    tmp = str(xml) + ".new.xml"
    ov.save_model(model, tmp, compress_to_fp16=False)
    os.replace(tmp[:-4] + ".bin", str(xml)[:-4] + ".bin")
    os.replace(tmp, str(xml))


def rerecord(folder, record_name, group=None):
    """Record the files of folder as they are now, as the stage would have:
    a converter bug, not tampering."""
    from converter.util.fsutil import describe_files

    path = folder / record_name
    record = json.loads(path.read_text())
    files = record["files"][group] if group else record["files"]
    fresh = describe_files(str(folder / group if group else folder), list(files))
    if group:
        record["files"][group] = fresh
    else:
        record["files"] = fresh
    path.unlink()   # the record may be a hard link into a shared build
    path.write_text(json.dumps(record))


def tree_digests(root):
    """{path below root: sha256} of every regular file, to show that a shared
    build was left as it was. The workdir lock is left out: a command that
    refuses at once still takes it and writes its pid there."""
    from converter.util.fsutil import file_digest

    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and name != ".ocrnet-convert.lock":
                digests[os.path.relpath(path, root)] = file_digest(path)
    return digests


@contextlib.contextmanager
def left_as_made(folder):
    """Yields folder; fails on leaving, naming the files, if any in it was changed."""
    before = tree_digests(folder)
    yield folder
    after = tree_digests(folder)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"a test changed the shared build {folder}: {changed[:10]}"


# --- assertions -----------------------------------------------------------------

def one_line_error(proc, code, *fragments):
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- inputs -----------------------------------------------------------------------

def at_build_size(path):
    """An image file as RGB uint8, resized (bilinear) to the lite build's input size."""
    from converter.data.images import load_rgb, resize_rgb
    height, width = SMALL_HW
    return resize_rgb(load_rgb(str(path)), width, height)


def original_input(rgb, config=None):
    """The original model's input for an RGB image (the lite config's contract by default)."""
    from converter.data.images import input_contract, prepare
    return prepare(rgb, input_contract(config or lite_config(), "original"))


def converted_input(rgb, config=None):
    """The converted models' input (raw BGR 0..255)."""
    from converter.data.images import input_contract, prepare
    return prepare(rgb, input_contract(config or lite_config(), "converted"))


def original_contract(config=None):
    from converter.data.images import input_contract
    return input_contract(config or lite_config(), "original")


def lite_command(command, *args):
    """The argv of lite_cli, for a test that starts the process itself (to signal it)."""
    return [sys.executable, "-m", "converter", command, "--config", LITE, *args]
