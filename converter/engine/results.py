"""The per-image result: the one schema, how it is sealed, checked and read.

OUT/images/<key>.json, written by the engine (the driver) when an image is
done, the JSON last; the key is items.result_key. Its fields:

    schema          RESULT_SCHEMA
    key             the file's own key
    sha256, label_sha256, size [W, H]   what the key was made of
    reference       null, or {name, seconds, conf_gt}
    backends        {name: {seconds, compare_seconds, precision, conf_gt,
                            compare, conf_ref, diff_png, diff_png_sha256}}
                    (compare, conf_ref and the diff PNG only with a reference)
    seal            HMAC-SHA256 of everything above, with this machine's secret
                    (util.cache.machine_secret)

`compare` is gates.compare()'s dict; conf_gt and conf_ref are confusion
matrices [classes][classes] (against ground truth, null without labels; and
against the reference's map). The image's id and path are not stored: they
are the current run's, so a moved or renamed dataset is reported by its
current names.

A stored result is a cache entry, trusted only when `usable` says so: its
seal verifies (or the run trusts unsealed results explicitly) and every
field passes `check` (types, finite ranges, and the fields agree with each
other and with the key). Anything else is recomputed.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from typing import Any

RESULT_SCHEMA = "ocrnet-convert/validate-image/2"
MAX_RESULT_BYTES = 16 << 20
MAX_SECONDS = 1e6          # a per-image time beyond this is not a measurement
PRECISIONS = ("f32", "bf16", "f16", "i8", "u8")
LOGIT_STATS = ("abs_max", "abs_mean", "abs_p99", "rel_max", "rel_mean", "rel_p99", "ref_abs_max")
NONFINITE_COUNTS = ("ref_nonfinite", "got_nonfinite")   # NaN or inf logits, of each side


class Bad(Exception):
    """A stored result that must not be used; the message says why."""


def diff_png_name(key: str, backend: str) -> str:
    return f"{key}.{backend}.png"


def _canonical(result):
    body = {k: v for k, v in result.items() if k != "seal"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def seal(result: dict, secret: bytes) -> dict:
    """The result with its seal (it must hold only finite numbers)."""
    return dict(result, seal=hmac.new(secret, _canonical(result), hashlib.sha256).hexdigest())


def sealed_by(result: dict, secret: bytes) -> bool:
    try:
        expected = hmac.new(secret, _canonical(result), hashlib.sha256).hexdigest()
    except (ValueError, TypeError):
        return False
    return isinstance(result.get("seal"), str) and hmac.compare_digest(result["seal"], expected)


# -- the checks ----------------------------------------------------------------

def _need(ok, why):
    if not ok:
        raise Bad(why)


def _number(v, what, low=0.0, high=math.inf):
    _need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high,
          f"{what} is not a number in [{low}, {high}]")
    return v


def _count(v, what, high):
    _need(type(v) is int and 0 <= v <= high, f"{what} is not a count in [0, {high}]")
    return v


def _matrix(m, num, what):
    _need(isinstance(m, list) and len(m) == num and all(
        isinstance(row, list) and len(row) == num and all(type(v) is int and v >= 0 for v in row) for row in m),
        f"{what} is not a {num}x{num} matrix of counts")
    return m


def _truth_counts(m):
    return [sum(row) for row in m]


def _check_logit_error(err, what, logits):
    _need(isinstance(err, dict) and set(err) == set(LOGIT_STATS + NONFINITE_COUNTS), f"{what} lacks its statistics")
    for k in NONFINITE_COUNTS:
        _count(err[k], f"{what}.{k}", logits)
    for k in LOGIT_STATS:
        _number(err[k], f"{what}.{k}")
    scale = err["ref_abs_max"]
    _need(scale > 0, f"{what}.ref_abs_max is 0")
    _need(err["abs_p99"] <= err["abs_max"] and err["abs_mean"] <= err["abs_max"], f"{what}: p99 or mean above max")
    for stat in ("max", "mean", "p99"):
        _need(math.isclose(err[f"rel_{stat}"], err[f"abs_{stat}"] / scale, rel_tol=1e-9, abs_tol=1e-30),
              f"{what}.rel_{stat} is not abs_{stat} / ref_abs_max")


def _check_compare(c, pixels, num, conf_ref, what):
    _need(isinstance(c, dict), f"{what} is not an object")
    _need(c.get("pixels") == pixels, f"{what}.pixels is not the image's {pixels}")
    disagree = _count(c.get("disagree"), f"{what}.disagree", pixels)
    agreement = _number(c.get("agreement"), f"{what}.agreement", 0.0, 1.0)
    _need(math.isclose(agreement, 1 - disagree / pixels, rel_tol=0, abs_tol=1e-12),
          f"{what}.agreement does not match disagree / pixels")
    _need(sum(map(sum, conf_ref)) == pixels and sum(conf_ref[i][i] for i in range(num)) == pixels - disagree,
          f"{what}: the confusion matrix against the original does not match disagree")
    margin = _number(c.get("max_flip_margin"), f"{what}.max_flip_margin")
    median = _number(c.get("flip_margins_p50"), f"{what}.flip_margins_p50")
    _need(median <= margin and (disagree or margin == 0.0), f"{what}: flip margins do not match the flips")
    flips = c.get("top_flips")
    _need(isinstance(flips, list) and len(flips) <= 5, f"{what}.top_flips is not a short list")
    for f in flips:
        _need(isinstance(f, dict) and all(type(f.get(k)) is int for k in ("from", "to", "count"))
              and 0 <= f["from"] < num and 0 <= f["to"] < num and f["from"] != f["to"]
              and f["count"] == conf_ref[f["from"]][f["to"]] > 0, f"{what}.top_flips does not match the matrix")
    ious = c.get("class_iou")
    _need(isinstance(ious, dict) and all(isinstance(k, str) and k.isdigit() and int(k) < num for k in ious),
          f"{what}.class_iou names unknown classes")
    for k, v in ious.items():
        _number(v, f"{what}.class_iou.{k}", 0.0, 1.0)
    _number(c.get("mean_iou"), f"{what}.mean_iou", 0.0, 1.0)
    _check_logit_error(c.get("logit_error"), f"{what}.logit_error", pixels * num)


def check(result: Any, key: str, expect: dict) -> None:
    """Raise Bad unless result is a well-formed result for this key.
    expect: {"sha256", "label_sha256", "size", "reference" (name or None),
    "backends" [names], "num_classes"}."""
    _need(isinstance(result, dict) and result.get("schema") == RESULT_SCHEMA, "another schema")
    _need(result.get("key") == key, "another key")
    for field in ("sha256", "label_sha256", "size"):
        _need(result.get(field) == expect[field], f"{field} is not the key's")
    num, (w, h) = expect["num_classes"], expect["size"]
    pixels, labelled = w * h, expect["label_sha256"] is not None
    truth = None
    ref = result.get("reference")
    if expect["reference"] is None:
        _need(ref is None, "a reference where there is none")
    else:
        _need(isinstance(ref, dict) and ref.get("name") == expect["reference"], "not the run's reference")
        _number(ref.get("seconds"), "reference.seconds", high=MAX_SECONDS)
        if labelled:
            truth = _truth_counts(_matrix(ref.get("conf_gt"), num, "reference.conf_gt"))
        else:
            _need(ref.get("conf_gt") is None, "reference.conf_gt without labels")
    entries = result.get("backends")
    _need(isinstance(entries, dict) and sorted(entries) == sorted(expect["backends"]), "not the run's backends")
    for name, e in entries.items():
        what = f"backends.{name}"
        _need(isinstance(e, dict), f"{what} is not an object")
        _number(e.get("seconds"), f"{what}.seconds", high=MAX_SECONDS)
        _number(e.get("compare_seconds", 0.0), f"{what}.compare_seconds", high=MAX_SECONDS)
        _need(e.get("precision") in PRECISIONS, f"{what}.precision is unknown")
        if labelled:
            counts = _truth_counts(_matrix(e.get("conf_gt"), num, f"{what}.conf_gt"))
            # every backend saw the same ground truth
            _need(truth is None or counts == truth, f"{what}.conf_gt is of other labels")
            truth = counts
            _need(sum(counts) <= pixels * 1024, f"{what}.conf_gt counts more pixels than any label map")
        else:
            _need(e.get("conf_gt") is None, f"{what}.conf_gt without labels")
        if expect["reference"] is None:
            _need(not {"compare", "conf_ref", "diff_png"} & set(e), f"{what} compares with no reference")
            continue
        conf_ref = _matrix(e.get("conf_ref"), num, f"{what}.conf_ref")
        _check_compare(e.get("compare"), pixels, num, conf_ref, f"{what}.compare")
        png = e.get("diff_png")
        _need(png is None or (png == diff_png_name(key, name) and isinstance(e.get("diff_png_sha256"), str)),
              f"{what}.diff_png is not this result's file")


def usable(result: Any, key: str, expect: dict, secret: bytes,
           trust_unsealed: bool = False) -> tuple[dict | None, str | None]:
    """(result or None, why not): a stored result that may be aggregated."""
    try:
        check(result, key, expect)
    except Bad as exc:
        return None, str(exc)
    if not sealed_by(result, secret) and not trust_unsealed:
        return None, "its seal does not verify (not written by this machine's runs, or changed since)"
    return result, None


def load(folder: str, key: str) -> dict | None:
    """The stored JSON of key: None when there is none; {} when something is
    there but is not a result (not JSON, too large, a FIFO or a device, which
    is never opened for reading: it could block), so that the run counts it
    refused and recomputes it."""
    import errno
    import stat

    path = os.path.join(folder, key + ".json")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        return None if exc.errno == errno.ENOENT else {}
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_RESULT_BYTES:
            return {}
        data = fh.read(MAX_RESULT_BYTES + 1)
    try:
        return json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return {}


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def read_png(folder: str, name: Any, sha256: Any, limit: int = 4 << 20) -> bytes | None:
    """A stored 1-bit diff PNG's bytes, only when they hash to what the sealed
    result says; else None."""
    if not isinstance(name, str) or os.path.basename(name) != name or not isinstance(sha256, str):
        return None
    try:
        fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    import stat

    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        data = fh.read(limit + 1)
    if len(data) > limit or hashlib.sha256(data).hexdigest() != sha256:
        return None
    return data
