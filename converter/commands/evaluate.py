"""evaluate: Cityscapes mIoU of a backend against the reference per-class IoU.

Reads the standard layout, ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
with ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png; labelIds map to
trainIds with the official table and all other ids are ignored. One confusion
matrix is accumulated over all images; a class's IoU is TP / (TP + FP + FN),
null when the class occurs in neither ground truth nor prediction, and mIoU is
the mean over the non-null classes. Predictions are made at the model's input
size and brought back to the ground truth's size with nearest-neighbour.
"""
import glob
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from converter.data.cityscapes import confusion_matrix, iou_per_class, label_ids_to_train_ids
from converter.errors import ConverterError
from converter.util.fsutil import write_bytes_atomic, write_json_atomic
from converter.data.images import load_rgb
from converter.records import export_weights


def find_pairs(root, split):
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


def load_gt(path, size=None):
    """trainIds [H, W] of a labelIds PNG; with size=(W, H), brought to that
    size with nearest-neighbour (labels are never interpolated)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise ConverterError(f"{path}: ground truth must be a single-channel labelIds PNG, got {img.mode}")
            ids = np.asarray(img)
    except ConverterError:
        raise
    except Exception as exc:
        raise ConverterError(f"{path}: not a readable ground-truth PNG ({type(exc).__name__})") from None
    if ids.max(initial=0) > 255:
        raise ConverterError(f"{path}: label ids above 255")
    train = label_ids_to_train_ids(ids.astype(np.uint8))
    if size is not None and train.shape != (size[1], size[0]):
        train = np.asarray(Image.fromarray(train).resize(tuple(size), Image.NEAREST))
    return train


def metrics(conf, class_names):
    per_class = {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou_per_class(conf))}
    present = [v for v in per_class.values() if v is not None]
    return {"miou": float(np.mean(present)) if present else None,
            "per_class_iou": per_class,
            "pixel_accuracy": float(np.trace(conf) / conf.sum()) if conf.sum() else None,
            "pixels": int(conf.sum())}


def markdown(result, reference):
    ref = reference["per_class_iou"]
    lines = [f"# Cityscapes evaluation ({result['backend']}, {result['split']}, {result['images']} images)", "",
             f"mIoU **{result['miou']:.4f}** (reference {reference['miou']:.4f}); "
             f"pixel accuracy {result['pixel_accuracy']:.4f}.", "",
             "| class | IoU | reference | difference |", "|---|---|---|---|"]
    suspicious = {c for c in ref if c != "traffic sign" and ref[c] == ref.get("traffic sign")}
    for name in ref:
        got = result["per_class_iou"][name]
        mark = " (suspect: equals traffic sign's to the digit, probably a copy error at the source)" \
            if name in suspicious else ""
        lines.append(f"| {name} | {'n/a' if got is None else f'{got:.4f}'} | {ref[name]:.4f}{mark} | "
                     f"{'' if got is None else f'{got - ref[name]:+.4f}'} |")
    if result["weights"] and result["weights"].get("kind") == "synthetic":
        lines += ["", "Weights are **synthetic**: these numbers say nothing about the published model."]
    return "\n".join(lines) + "\n"


def run_evaluate(config, workdir, root, split, backend, output, limit=None, jobs=2, threads=2):
    from converter.commands.predict import Segmenter

    pairs = find_pairs(root, split)[:limit]  # limit None: all
    segmenter = Segmenter(config, workdir, backend, threads)
    num = config.num_classes
    conf = np.zeros((num, num), np.int64)
    start = time.perf_counter()
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=len(pairs), unit="img", file=sys.stderr, desc=f"evaluate ({backend})")

    def load(pair):
        return load_rgb(pair[0]), load_gt(pair[1])

    # --jobs threads decode images and ground truth ahead of the (single)
    # inference stream; the model itself already uses all cores.
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for i, (rgb, gt) in enumerate(pool.map(load, pairs)):
            if gt.shape != rgb.shape[:2]:
                raise ConverterError(f"{pairs[i][1]}: size {gt.shape[::-1]} differs from its image's {rgb.shape[1::-1]}")
            conf += confusion_matrix(gt, segmenter.segment(rgb), num)
            if bar:
                bar.update(1)
            else:
                print(f"evaluate: {i + 1}/{len(pairs)}", file=sys.stderr)
    if bar:
        bar.close()
    seconds = time.perf_counter() - start
    result = dict(metrics(conf, config.class_names), backend=backend, split=split, images=len(pairs),
                  weights=export_weights(workdir),
                  seconds=round(seconds, 1), seconds_per_image=round(seconds / len(pairs), 2),
                  confusion=conf.tolist(),
                  reference={"miou": config.reference["miou"], "per_class_iou": config.reference["per_class_iou"]})
    os.makedirs(output, exist_ok=True)
    write_json_atomic(os.path.join(output, "metrics.json"), result)
    write_bytes_atomic(os.path.join(output, "metrics.md"), markdown(result, config.reference).encode())
    return [os.path.join(output, "metrics.json"), os.path.join(output, "metrics.md")], result
