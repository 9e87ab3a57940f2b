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
import os
import time

import numpy as np

from converter.data.cityscapes import metrics
from converter.records import export_weights
from converter.util.fsutil import write_bytes_atomic, write_json_atomic


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


def run_evaluate(config, workdir, root, split, backend, output, limit=None, workers=1, threads=None):
    """validate with one backend against ground truth, no reference: the
    same engine, with --workers workers each holding the backend."""
    from converter.backends import check_artifacts, get
    from converter.util.progress import progress_printer
    from converter.validate.items import collect_items
    from converter.validate.run import run_engine

    selected, _, records = check_artifacts(workdir, [get(backend)], named=True)
    items = collect_items(cityscapes=root, split=split, limit=limit)
    start = time.perf_counter()
    results, _, _ = run_engine(config, workdir, records, items, selected, None, None, workers=workers,
                               threads=threads, progress=progress_printer(f"evaluate ({backend})"))
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
