"""What the engine compares: images (with labels or not) and their result keys.

An image's result is keyed by the sha256 of everything that determines it:
the image's bytes, its labels' bytes, the input size, and for the reference
and each backend its name, runtime, precision, input contract and the sha256
of every model file. A rerun with the same inputs finds the key's file and
reuses it; any change gives a new key. Gate thresholds are not in the key:
the gates are applied when the results are aggregated.
"""
import hashlib
import io
import json
import os

from converter.errors import ConverterError

MAX_IMAGE_BYTES = 64 << 20   # a 2048x1024 PNG is ~2-4 MB; a file beyond this is refused, not read
RESULT_SCHEMA = "ocrnet-convert/validate-image/1"


def read_bounded(path, what="image"):
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_IMAGE_BYTES + 1)
    except FileNotFoundError:
        raise ConverterError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConverterError(f"{path}: not a file") from None
    except OSError as exc:
        raise ConverterError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ConverterError(f"{path}: larger than {MAX_IMAGE_BYTES >> 20} MB, refused")
    return data


def _check_header(path, data):
    """A file that is not an image fails when the run is planned, not in a
    worker an hour later (a truncated body still fails there, in one line)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ConverterError(f"{path}: not a readable image ({type(exc).__name__})") from None


class Item:
    """One image to compare: its path, its labels' path (or None), the
    sha256 of both (read once when the run is planned), and its id in
    reports."""

    def __init__(self, ident, path, label=None):
        self.id, self.path, self.label = ident, path, label
        data = read_bounded(path)
        _check_header(path, data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.label_sha256 = hashlib.sha256(read_bounded(label, "labels")).hexdigest() if label else None

    def payload(self):
        """What a worker gets: the bytes, read again and checked against the
        hash the key was made of (a file changed mid-run is an error)."""
        image = read_bounded(self.path)
        label = read_bounded(self.label, "labels") if self.label else None
        if hashlib.sha256(image).hexdigest() != self.sha256 or (
                label is not None and hashlib.sha256(label).hexdigest() != self.label_sha256):
            raise ConverterError(f"{self.path}: changed during the run")
        return {"id": self.id, "image": image, "label": label}


def make_items(paths, labels=None):
    """Items for image paths (labels: a parallel list of label paths)."""
    from converter.data.images import image_ids

    labels = labels or [None] * len(paths)
    return [Item(i, p, lab) for i, p, lab in zip(image_ids(paths), paths, labels)]


def models_fingerprint(backend_specs, size):
    """The part of every key that does not depend on the image."""
    described = [{k: b[k] for k in ("name", "runtime", "precision", "contract", "output")}
                 | {"files": sorted(b["files"].values())} for b in backend_specs]
    return hashlib.sha256(json.dumps({"schema": RESULT_SCHEMA, "size": list(size), "backends": described},
                                     sort_keys=True).encode()).hexdigest()


def result_key(item, fingerprint):
    return hashlib.sha256(f"{fingerprint}:{item.sha256}:{item.label_sha256}".encode()).hexdigest()[:40]


def _matrix(m, num):
    return isinstance(m, list) and len(m) == num and all(
        isinstance(row, list) and len(row) == num and all(type(v) is int and v >= 0 for v in row) for row in m)


def well_formed(result, names, reference, num, labelled):
    """Whether a stored result has every field aggregation reads, of the
    right type: a damaged or forged file is recomputed, never a traceback."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

    try:
        if reference and not number(result["reference"]["seconds"]):
            return False
        for name in names:
            e = result["backends"][name]
            if not number(e["seconds"]) or (labelled and not _matrix(e["conf_gt"], num)):
                return False
            if reference:
                c = e["compare"]
                if not (all(number(c[k]) for k in ("pixels", "disagree", "agreement", "max_flip_margin"))
                        and _matrix(e["conf_ref"], num) and isinstance(c.get("logit_error", {}), dict)
                        and all(number(v) for v in c.get("logit_error", {}).values())):
                    return False
        if reference and labelled and not _matrix(result["reference"]["conf_gt"], num):
            return False
        return isinstance(result["id"], str)
    except (KeyError, TypeError):
        return False


def load_result(folder, key):
    """The stored result of key, or None when absent, partial or of another form."""
    path = os.path.join(folder, key + ".json")
    try:
        with open(path, "rb") as fh:
            data = fh.read(16 << 20)
        result = json.loads(data)
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("schema") != RESULT_SCHEMA or result.get("key") != key \
            or not isinstance(result.get("backends"), dict):
        return None
    return result
