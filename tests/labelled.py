"""Labelled data sets with known confusion, and IoU computed independently of the tool."""
import numpy as np
from PIL import Image

from converter.data.cityscapes import LABEL_TO_TRAIN

TRAIN_TO_LABEL = {t: l for l, t in LABEL_TO_TRAIN.items()}


def write_dataset(root, predictions, damage):
    """GT = the backend's own class maps, turned into labelIds, then damaged."""
    for (city, stem), (rgb, pred) in predictions.items():
        img_dir = root / "leftImg8bit" / "val" / city
        gt_dir = root / "gtFine" / "val" / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(img_dir / f"{stem}_leftImg8bit.png")
        label = np.vectorize(TRAIN_TO_LABEL.get)(pred).astype(np.uint8)
        label = damage(label)
        Image.fromarray(label).save(gt_dir / f"{stem}_gtFine_labelIds.png")


def to_train(label):
    train = np.full(label.shape, 255)
    for l_id, t_id in LABEL_TO_TRAIN.items():
        train[label == l_id] = t_id
    return train


def expected(preds, gts, train_ids=False):
    """Independent IoU: per class, count TP/FP/FN with boolean masks over all
    images. gts: labelIds maps (trainIds with train_ids=True)."""
    tp, fp, fn = np.zeros(19), np.zeros(19), np.zeros(19)
    correct = total = 0
    for pred, label in zip(preds, gts):
        train = np.asarray(label) if train_ids else to_train(label)
        valid = train != 255
        for c in range(19):
            tp[c] += np.sum((pred == c) & (train == c) & valid)
            fp[c] += np.sum((pred == c) & (train != c) & valid)
            fn[c] += np.sum((pred != c) & (train == c) & valid)
        correct += np.sum((pred == train) & valid)
        total += np.sum(valid)
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else None for c in range(19)]
    present = [v for v in iou if v is not None]
    return iou, sum(present) / len(present), correct / total
