"""Cityscapes' layout, label format and the metrics on class maps.

The classes' names and colours are the model's, in the config (`classes`);
this module holds what belongs to the dataset: where images and labels lie
(ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png beside
ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png), the labelId ->
trainId table, and the IoU metrics of a confusion matrix.
"""
from __future__ import annotations

import glob
import os

import numpy as np
from typing import Sequence

from converter.errors import ConverterError


def colorize(classes: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """int class map [H, W] -> uint8 RGB [H, W, 3] with one colour per class
    (palette: the config's); ids outside the palette are black."""
    colours = np.asarray(palette, np.uint8)
    out = np.zeros(classes.shape + (3,), np.uint8)
    valid = (classes >= 0) & (classes < len(colours))
    out[valid] = colours[classes[valid]]
    return out


# Official Cityscapes label table (cityscapesScripts labels.py): labelId ->
# trainId for the 19 evaluated classes; every other id is ignored (255).
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                  24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
IGNORE = 255


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    lut = np.full(256, IGNORE, np.uint8)
    for label, train in LABEL_TO_TRAIN.items():
        lut[label] = train
    return lut[label_ids]


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num: int) -> np.ndarray:
    """[num, num] counts of (truth class, predicted class); truth == IGNORE is skipped."""
    valid = truth != IGNORE
    idx = truth[valid].astype(np.int64) * num + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num * num).reshape(num, num)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of each class, TP / (TP + FP + FN), from a confusion matrix; NaN
    for a class that occurs in neither truth nor prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def find_pairs(root: str, split: str) -> list[tuple[str, str]]:
    """[(image, labels)] of the split, sorted; a missing label file is an error."""
    images = sorted(glob.glob(os.path.join(root, "leftImg8bit", split, "*", "*_leftImg8bit.png")))
    if not images:
        raise ConverterError(f"no images under {os.path.join(root, 'leftImg8bit', split)} "
                             "(expected <city>/*_leftImg8bit.png)")
    pairs = []
    for img in images:
        city = os.path.basename(os.path.dirname(img))
        stem = os.path.basename(img)[: -len("_leftImg8bit.png")]
        gt = os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_labelIds.png")
        if not os.path.isfile(gt):
            raise ConverterError(f"missing ground truth for {img}: {gt}")
        pairs.append((img, gt))
    return pairs


def load_gt(path: str, size: tuple[int, int] | None = None, data: bytes | None = None) -> np.ndarray:
    """trainIds [H, W] of a labelIds PNG (from data, its bytes, when given);
    with size=(W, H), brought to that size with nearest-neighbour (labels
    are never interpolated)."""
    import io

    from PIL import Image

    from converter.data.images import MAX_PIXELS

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ConverterError(f"{path}: {img.width}x{img.height} is too large for ground truth")
            if img.mode not in ("L", "P", "I", "I;16"):
                raise ConverterError(f"{path}: ground truth must be a single-channel labelIds PNG, got {img.mode}")
            ids = np.asarray(img)
    except ConverterError:
        raise
    except Exception as exc:
        raise ConverterError(f"{path}: not a readable ground-truth PNG ({type(exc).__name__})") from None
    if ids.max(initial=0) > 255 or ids.min(initial=0) < 0:
        raise ConverterError(f"{path}: label ids outside 0..255 ({int(ids.min())}..{int(ids.max())})")
    train = label_ids_to_train_ids(ids.astype(np.uint8))
    if size is not None and train.shape != (size[1], size[0]):
        train = np.asarray(Image.fromarray(train).resize((size[0], size[1]), Image.Resampling.NEAREST))
    return train


def metrics(conf: np.ndarray, class_names: Sequence[str]) -> dict:
    """mIoU (over the classes present in truth or prediction), per-class IoU
    (None for a class absent from both), pixel accuracy and pixel count."""
    per_class = {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou_per_class(conf))}
    present = [v for v in per_class.values() if v is not None]
    return {"miou": float(np.mean(present)) if present else None,
            "per_class_iou": per_class,
            "pixel_accuracy": float(np.trace(conf) / conf.sum()) if conf.sum() else None,
            "pixels": int(conf.sum())}
