"""evaluate: Cityscapes mIoU of a backend against the reference per-class IoU.

Reads the standard layout, ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
with ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png; labelIds map to
trainIds with the official table and all other ids are ignored. One confusion
matrix is accumulated over all images; a class's IoU is TP / (TP + FP + FN),
null when the class occurs in neither ground truth nor prediction, and mIoU is
the mean over the non-null classes. Predictions are made at the model's input
size and brought back to the ground truth's size with nearest-neighbour. The images go through the validate engine
(converter.validate) with this one backend and no reference.
"""
import glob
import os
import time

import numpy as np

from converter.data.cityscapes import iou_per_class, label_ids_to_train_ids
from converter.errors import ConverterError
from converter.util.fsutil import write_bytes_atomic, write_json_atomic
from converter.data.images import MAX_PIXELS
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


def load_gt(path, size=None, data=None):
    """trainIds [H, W] of a labelIds PNG (from data, its bytes, when given);
    with size=(W, H), brought to that size with nearest-neighbour (labels
    are never interpolated)."""
    import io

    from PIL import Image

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


def run_evaluate(config, workdir, root, split, backend, output, limit=None, jobs=1, threads=None):
    """validate with one backend against ground truth, no reference: the
    same engine, with --jobs workers each holding the backend."""
    from converter.backends import get
    from converter.commands.validate import collect_items, run_engine
    from converter.stages.parity import check_artifacts

    if jobs < 1:
        raise ConverterError("--jobs must be at least 1")
    selected, _, records = check_artifacts(workdir, [get(backend)], named=True)
    items = collect_items(cityscapes=root, split=split, limit=limit)
    start = time.perf_counter()
    results, _, _ = run_engine(config, workdir, records, items, selected, None, None, workers=jobs, threads=threads,
                               what=f"evaluate ({backend})")
    num = config.num_classes
    conf = np.zeros((num, num), np.int64)
    for r in results:
        conf += np.asarray(r["backends"][backend]["conf_gt"], np.int64)
    seconds = time.perf_counter() - start
    result = dict(metrics(conf, config.class_names), backend=backend, split=split, images=len(items),
                  weights=export_weights(workdir),
                  seconds=round(seconds, 1), seconds_per_image=round(seconds / len(items), 2),
                  confusion=conf.tolist(),
                  reference={"miou": config.reference["miou"], "per_class_iou": config.reference["per_class_iou"]})
    os.makedirs(output, exist_ok=True)
    write_json_atomic(os.path.join(output, "metrics.json"), result)
    write_bytes_atomic(os.path.join(output, "metrics.md"), markdown(result, config.reference).encode())
    return [os.path.join(output, "metrics.json"), os.path.join(output, "metrics.md")], result
