"""Cityscapes' label format and the metrics on class maps.

The classes' names and colours are the model's, in the config (`classes`);
this module holds what belongs to the dataset: the labelId -> trainId table.
"""
import numpy as np


def colorize(classes, palette):
    """int class map [H, W] -> uint8 RGB [H, W, 3] with one colour per class
    (palette: the config's); ids outside the palette are black."""
    palette = np.asarray(palette, np.uint8)
    out = np.zeros(classes.shape + (3,), np.uint8)
    valid = (classes >= 0) & (classes < len(palette))
    out[valid] = palette[classes[valid]]
    return out


# Official Cityscapes label table (cityscapesScripts labels.py): labelId ->
# trainId for the 19 evaluated classes; every other id is ignored (255).
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                  24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
IGNORE = 255


def label_ids_to_train_ids(label_ids):
    lut = np.full(256, IGNORE, np.uint8)
    for label, train in LABEL_TO_TRAIN.items():
        lut[label] = train
    return lut[label_ids]


def confusion_matrix(truth, pred, num):
    """[num, num] counts of (truth class, predicted class); truth == IGNORE is skipped."""
    valid = truth != IGNORE
    idx = truth[valid].astype(np.int64) * num + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num * num).reshape(num, num)


def iou_per_class(conf):
    """IoU of each class, TP / (TP + FP + FN), from a confusion matrix; NaN
    for a class that occurs in neither truth nor prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)
