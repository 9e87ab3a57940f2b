"""Atomic file output and hashing.

Every artifact is written under a temporary name in the destination folder and
renamed into place, so a killed process never leaves a half-written file at a
final path.
"""
import contextlib
import hashlib
import json
import os
import shutil
import tempfile


def file_digest(path, algo="sha256", chunk=1 << 20):
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_bytes_atomic(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are for sharing
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask():
    current = os.umask(0)
    os.umask(current)
    return current


def write_json_atomic(path, obj):
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_png_atomic(path, image, optimize=False):
    """image: a PIL Image, or an array Pillow can take."""
    import io

    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=optimize)
    write_bytes_atomic(path, buf.getvalue())


@contextlib.contextmanager
def staging_dir(final_dir):
    """Yield a temporary folder beside final_dir; on success, move each file in
    it to final_dir with os.replace (atomic per file). On failure nothing at
    final_dir changes."""
    parent = os.path.dirname(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    # A run killed with SIGKILL leaves its staging folder behind (never a
    # final file); the next run of the same stage removes it.
    prefix, suffix = f".{os.path.basename(final_dir)}.", ".staging"
    for name in os.listdir(parent):
        if name.startswith(prefix) and name.endswith(suffix):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
    try:
        yield tmp
        os.makedirs(final_dir, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            os.replace(os.path.join(tmp, name), os.path.join(final_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def describe_files(folder, names):
    return {n: {"size": os.path.getsize(os.path.join(folder, n)),
                "sha256": file_digest(os.path.join(folder, n))} for n in names}
