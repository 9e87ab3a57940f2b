"""evaluate: Cityscapes mIoU of a backend against the reference per-class IoU.

Reads the standard layout, ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
with ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png; labelIds map to
trainIds with the official table and all other ids are ignored. One confusion
matrix is accumulated over all images; a class's IoU is TP / (TP + FP + FN),
null when the class occurs in neither ground truth nor prediction, and mIoU is
the mean over the non-null classes. Predictions are made at the model's input
size and brought back to the ground truth's size with nearest-neighbour. The images go through the validate engine
(converter.engine) with this one backend and no reference.
"""
import os
import time

import numpy as np

from converter.data.cityscapes import metrics
from converter.records import export_weights
from converter.util.text import md_table_head
from converter.util.fsutil import write_bytes_atomic, write_json_atomic


def number_text(value, fmt=".4f"):
    return "n/a" if value is None else format(value, fmt)


def markdown(result, reference, class_names):
    """reference: the published {miou, per_class_iou}, or None (a model
    without one: the table has no comparison). mIoU is None when no pixel
    was labelled with a class the model knows."""
    ref = (reference or {}).get("per_class_iou") or {}
    lines = [f"# Cityscapes evaluation ({result['backend']}, {result['split']}, {result['images']} images)", "",
             f"mIoU **{number_text(result['miou'])}**"
             + (f" (reference {reference['miou']:.4f})" if reference else " (no published reference)")
             + f"; pixel accuracy {number_text(result['pixel_accuracy'])}.", ""]
    if result["miou"] is None:
        lines += ["No labelled pixel of a class the model knows: every label was ignored.", ""]
    lines += md_table_head("class", "IoU", "published", "difference")
    suspicious = {c for c in ref if c != "traffic sign" and ref[c] == ref.get("traffic sign")}
    for name in class_names:
        got, published = result["per_class_iou"][name], ref.get(name)
        mark = " (suspect: equals traffic sign's to the digit, probably a copy error at the source)" \
            if name in suspicious else ""
        diff = "" if got is None or published is None else f"{got - published:+.4f}"
        lines.append(f"| {name} | {number_text(got)} | {number_text(published)}{mark} | {diff} |")
    if result["weights"] and result["weights"].get("kind") == "synthetic":
        lines += ["", "Weights are **synthetic**: these numbers say nothing about the published model."]
    return "\n".join(lines) + "\n"


def run_evaluate(config, workdir, *, root, split, backend, output, limit=None, workers=1, threads=None):
    """validate with one backend against ground truth, no reference: the
    same engine, with --workers workers each holding the backend."""
    from converter.backends import check_artifacts, get
    from converter.util.progress import progress_printer
    from converter.engine.items import collect_items
    from converter.engine.scheduler import EngineOptions
    from converter.engine.run import run_engine

    selected, _, records = check_artifacts(workdir, config, [get(backend)], named=True)
    items = collect_items(cityscapes=root, split=split, limit=limit)
    start = time.perf_counter()
    results, _, _ = run_engine(config, workdir, records=records, items=items, selected=selected, reference=None,
                               options=EngineOptions(workers=workers, threads=threads),
                               progress=progress_printer(f"evaluate ({backend})"))
    num = config.num_classes
    conf = np.zeros((num, num), np.int64)
    for r in results:
        conf += np.asarray(r["backends"][backend]["conf_gt"], np.int64)
    seconds = time.perf_counter() - start
    result = dict(metrics(conf, config.class_names), backend=backend, split=split, images=len(items),
                  weights=export_weights(workdir),
                  seconds=round(seconds, 1), seconds_per_image=round(seconds / len(items), 2),
                  confusion=conf.tolist(),
                  reference=({"miou": config.published_accuracy["miou"],
                              "per_class_iou": config.published_accuracy["per_class_iou"]}
                             if config.published_accuracy else None))
    os.makedirs(output, exist_ok=True)
    text = markdown(result, config.published_accuracy, config.class_names)
    write_json_atomic(os.path.join(output, "metrics.json"), result)
    write_bytes_atomic(os.path.join(output, "metrics.md"), text.encode())
    from converter.stages import StageResult

    return StageResult("evaluate", [os.path.join(output, "metrics.json"), os.path.join(output, "metrics.md")], result)
