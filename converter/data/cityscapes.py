"""Cityscapes' 19 training classes (trainIds 0..18) and their standard colours."""
import numpy as np

CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
           "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
           "motorcycle", "bicycle")
PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)


def colorize(classes):
    """int class map [H, W] -> uint8 RGB [H, W, 3]; ids outside 0..18 are black."""
    out = np.zeros(classes.shape + (3,), np.uint8)
    valid = (classes >= 0) & (classes < len(PALETTE))
    out[valid] = PALETTE[classes[valid]]
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


def confusion_matrix(truth, pred, num=len(CLASSES)):
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
