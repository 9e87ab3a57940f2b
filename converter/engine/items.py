"""What the engine compares: images (with labels or not) and their result keys.

An image's result is keyed by the sha256 of everything that determines it:
the image's bytes, its labels' bytes, the input size, and for the reference
and each backend its name, runtime, precision, input contract and the sha256
of every model file. A rerun with the same inputs finds the key's file and
reuses it; any change gives a new key. Gate thresholds are not in the key:
the gates are applied when the results are aggregated.
"""
from __future__ import annotations

import hashlib
import json
import os

from converter.errors import ConverterError

from converter.engine.results import RESULT_SCHEMA

MAX_IMAGE_BYTES = 64 << 20   # a 2048x1024 PNG is ~2-4 MB; a file beyond this is refused, not read


def read_bounded(path: str, what: str = "image") -> bytes:
    """The bytes of a regular file of at most MAX_IMAGE_BYTES (a FIFO or a
    device is refused without blocking on it)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConverterError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ConverterError(f"cannot read {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ConverterError(f"{path}: not a regular file")
        try:
            data = fh.read(MAX_IMAGE_BYTES + 1)
        except OSError as exc:
            raise ConverterError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ConverterError(f"{path}: larger than {MAX_IMAGE_BYTES >> 20} MB, refused")
    return data


def check_decodes(path: str, data: bytes, label: str | None = None, label_data: bytes | None = None) -> None:
    """Decode the image (and its labels) here, on the driver, before any
    worker loads a model: a truncated file, a decompression bomb, a label
    map of another size or with ids outside 0..255 is an error naming the
    file at once, not in a worker hours into a run."""
    from converter.data.images import load_rgb

    rgb = load_rgb(path, data=data)
    if label is not None:
        from converter.data.cityscapes import load_gt

        gt = load_gt(label, data=label_data)
        if gt.shape != rgb.shape[:2]:
            raise ConverterError(f"{label}: {gt.shape[1]}x{gt.shape[0]}, but its image {path} is "
                                 f"{rgb.shape[1]}x{rgb.shape[0]}")


class Item:
    """One image to compare: its path, its labels' path (or None), the
    sha256 of both (read and decoded once when the run is planned), and its
    id in reports."""

    def __init__(self, ident, path, label=None):
        self.id, self.path, self.label = ident, path, label
        data = read_bounded(path)
        label_data = read_bounded(label, "labels") if label else None
        check_decodes(path, data, label, label_data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.label_sha256 = hashlib.sha256(label_data).hexdigest() if label else None

    def payload(self) -> dict:
        """What a worker gets: the bytes, read again and checked against the
        hash the key was made of (a file changed mid-run is an error)."""
        image = read_bounded(self.path)
        label = read_bounded(self.label, "labels") if self.label else None
        if hashlib.sha256(image).hexdigest() != self.sha256 or (
                label is not None and hashlib.sha256(label).hexdigest() != self.label_sha256):
            raise ConverterError(f"{self.path}: changed during the run")
        return {"id": self.id, "name": self.path, "image": image, "label": label, "label_name": self.label}


def collect_items(images: list[str] | None = None, cityscapes: str | None = None, split: str = "val",
                  limit: int | None = None) -> list[Item]:
    """Items of image files and folders (default: the bundled samples), or of
    a Cityscapes-layout folder with its labels; the first `limit`."""
    from converter.data.cityscapes import find_pairs
    from converter.data.images import expand_image_args, sample_images

    if cityscapes:
        if not os.path.isdir(cityscapes):
            raise ConverterError(f"--cityscapes {cityscapes}: not a folder")
        pairs = find_pairs(cityscapes, split)[:limit]
        return make_items([p[0] for p in pairs], [p[1] for p in pairs])
    paths = expand_image_args(images) if images else sample_images()
    return make_items(paths[:limit])


def make_items(paths: list[str], labels: list[str | None] | None = None) -> list[Item]:
    """Items for image paths (labels: a parallel list of label paths)."""
    from converter.data.images import image_ids

    labels = labels or [None] * len(paths)
    return [Item(i, p, lab) for i, p, lab in zip(image_ids(paths), paths, labels)]


def models_fingerprint(backend_specs: list[dict], size: tuple[int, int]) -> str:
    """The part of every key that does not depend on the image."""
    described = [{k: b[k] for k in ("name", "runtime", "precision", "contract", "output")}
                 | {"files": sorted(b["files"].values())} for b in backend_specs]
    return hashlib.sha256(json.dumps({"schema": RESULT_SCHEMA, "size": list(size), "backends": described},
                                     sort_keys=True).encode()).hexdigest()


def result_key(item: Item, fingerprint: str) -> str:
    return hashlib.sha256(f"{fingerprint}:{item.sha256}:{item.label_sha256}".encode()).hexdigest()[:40]
