"""Per-image results -> metrics per backend, the gates, validate.json/.md.

Everything here is a sum over the stored per-image results, in item order,
so a rerun that reuses every result reproduces the same metrics. Per
backend:

- pixel agreement with the original's class maps (all pixels of all images);
- mIoU of its maps against the original's maps (one confusion matrix summed
  over the images: how far the conversion moves the segmentation);
- with labels, mIoU and per-class IoU against ground truth, and the drop
  from the original's mIoU on the same images (gates.task_result);
- the gate of its precision (gates.gate, the same as parity's);
- the 5 images with the lowest agreement, each drawn as a PNG.
"""
import io
import os

import numpy as np

from converter.data.cityscapes import metrics as gt_metrics
from converter.util.text import md_cell, md_table_head
from converter.engine.gates import backend_failed, gate, miou, task_result

WORST = 5


def sum_matrices(matrices, num):
    """The sum of [num, num] confusion matrices (lists); None entries count as zero."""
    total = np.zeros((num, num), np.int64)
    for m in matrices:
        if m is not None:
            total += np.asarray(m, np.int64)
    return total


def _seconds(values):
    return {"mean": round(float(np.mean(values)), 3), "median": round(float(np.median(values)), 3)} if values else None


def aggregate(results, config, backends, reference):
    """backends: the registry entries compared (reference excluded);
    reference: its name or None. Returns the metrics part of validate.json."""
    num, names = config.num_classes, config.class_names
    labelled = all(r.get("label_sha256") for r in results) and bool(results)
    out, for_gate = {}, {}
    ref_conf = sum_matrices([r["reference"]["conf_gt"] for r in results], num) if reference and labelled else None
    for b in backends:
        entries = [(r["id"], r["backends"][b.name]) for r in results]
        entry = {"title": b.title, "runtime": b.runtime,
                 "precision": ", ".join(sorted({str(e.get("precision")) for _, e in entries})),
                 "gated": b.gated, "budget": b.budget}
        if reference:
            pixels = sum(e["compare"]["pixels"] for _, e in entries)
            disagree = sum(e["compare"]["disagree"] for _, e in entries)
            vs_ref, _ = miou(sum_matrices([e["conf_ref"] for _, e in entries], num))
            errs = [e["compare"]["logit_error"] for _, e in entries if "logit_error" in e["compare"]]
            ranked = sorted([ie for ie in entries if ie[1]["compare"]["disagree"]],
                            key=lambda ie: (ie[1]["compare"]["agreement"], ie[0]))[:WORST]
            entry.update({
                "pixels": pixels, "disagree": disagree, "agreement": 1 - disagree / pixels if pixels else 1.0,
                "lowest_image_agreement": min(e["compare"]["agreement"] for _, e in entries),
                "max_flip_margin": max(e["compare"].get("max_flip_margin", 0.0) for _, e in entries),
                "miou_vs_original_maps": vs_ref,
                "logit_error": {"rel_p99_max": max(e["rel_p99"] for e in errs),
                                "rel_max_max": max(e["rel_max"] for e in errs)} if errs else None,
                "worst": [{"id": i, "agreement": e["compare"]["agreement"], "disagree": e["compare"]["disagree"]}
                          for i, e in ranked]})
            for_gate[b.name] = {"gated": b.gated, "budget": b.budget,
                                "images": {i: e["compare"] for i, e in entries}}
        if labelled:
            conf = sum_matrices([e["conf_gt"] for _, e in entries], num)
            entry["ground_truth"] = gt_metrics(conf, names)
            if ref_conf is not None:
                task = task_result(ref_conf, conf, names)
                entry["task"] = {k: task[k] for k in ("miou", "original_miou", "miou_drop")}
                entry["task"]["per_class"] = task["per_class"]
                if b.name in for_gate:
                    for_gate[b.name]["task"] = task
        out[b.name] = entry
    failures = gate(for_gate, config) if reference else []
    for name, entry in out.items():
        entry["verdict"] = ("FAILED" if backend_failed(name, failures) else "passed") if entry["gated"] \
            and reference else "reported"
    summary = {"images": len(results), "labelled": labelled, "backends": out, "passed": not failures,
               "failures": failures}
    if reference:
        summary["reference"] = {"name": reference}
        if ref_conf is not None:
            summary["reference"]["ground_truth"] = gt_metrics(ref_conf, names)
    summary["thresholds"] = {"min_agreement": config.min_agreement, "tie_margin": config.tie_margin,
                             "budgets": config.budgets, "max_miou_drop": config.max_miou_drop}
    return summary


def timing(results, backends, reference):
    """Seconds per image of each backend's inference (mean, median), as
    measured when each image was computed: kept apart from the metrics,
    which do not depend on the machine."""
    out = {b.name: _seconds([r["backends"][b.name]["seconds"] for r in results]) for b in backends}
    if reference:
        out[reference] = _seconds([r["reference"]["seconds"] for r in results])
    return out


def draw_worst(summary, results, out_dir, size):
    """OUT/worst/<backend>-<rank>.png: the input (dimmed) with the pixels
    whose class differs from the original's in red. Returns {backend: [paths]}."""
    from PIL import Image

    from converter.data.images import load_rgb, resize_rgb
    from converter.util.fsutil import write_png_atomic

    from converter.engine.results import read_png

    by_id = {r["id"]: r for r in results}
    drawn = {}
    for name, entry in summary["backends"].items():
        for rank, worst in enumerate(entry.get("worst", []), 1):
            result = by_id[worst["id"]]
            stored = result["backends"][name]
            png = read_png(os.path.join(out_dir, "images"), stored.get("diff_png"), stored.get("diff_png_sha256"))
            if png is None:
                continue
            rgb = resize_rgb(load_rgb(result["path"]), *size)
            with Image.open(io.BytesIO(png)) as img:
                if img.size != tuple(size) or img.mode != "1":
                    continue
                mask = np.asarray(img.convert("L")) > 0
            picture = (rgb // 3).astype(np.uint8)
            picture[mask] = (255, 32, 32)
            path = os.path.join(out_dir, "worst", f"{name}-{rank}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_png_atomic(path, picture)
            worst["png"] = os.path.relpath(path, out_dir)
            drawn.setdefault(name, []).append(path)
    return drawn


def markdown(doc):
    s = doc["metrics"]
    lines = [f"# Validation: {doc['model']}", "",
             f"{s['images']} image(s) at {doc['input_size'][0]}x{doc['input_size'][1]}"
             + (" with ground truth" if s["labelled"] else "") + f", reference: "
             f"{(s.get('reference') or {}).get('name', 'none')}. Verdict: **"
             f"{'PASSED' if s['passed'] else 'FAILED'}**.", ""]
    if doc.get("weights", {}).get("kind") == "synthetic":
        lines += ["Weights are **synthetic**: agreement and budgets are meaningful, mIoU against ground truth "
                  "is not.", ""]
    lines += md_table_head("backend", "computes in", "gate", "agreement", "lowest image", "mIoU vs original's maps",
                           "logit error p99 / max (rel.)", "mIoU (GT)", "drop", "s/image", "verdict")
    for name, e in s["backends"].items():
        err = e.get("logit_error")
        task = e.get("task") or {}
        gt = (e.get("ground_truth") or {}).get("miou")
        lines.append(
            f"| {name} | {e['precision'] or '-'} | {e['budget'] if e['gated'] else 'reported'} | "
            + (f"{100 * e['agreement']:.4f} % | {100 * e['lowest_image_agreement']:.4f} % | "
               f"{e['miou_vs_original_maps']:.4f} | " if "agreement" in e else "- | - | - | ")
            + (f"{err['rel_p99_max']:.3g} / {err['rel_max_max']:.3g} | " if err else "- | ")
            + (f"{gt:.4f} | " if gt is not None else "- | ")
            + (f"{task['miou_drop']:+.4f} | " if task.get("miou_drop") is not None else "- | ")
            + f"{(doc['timing'].get(name) or {}).get('mean', '-')} | {e['verdict']} |")
    ref = s.get("reference")
    if ref:
        gt = (ref.get("ground_truth") or {}).get("miou")
        lines += ["", f"Reference {ref['name']}: {(doc['timing'].get(ref['name']) or {}).get('mean')} s/image"
                  + (f", mIoU against ground truth {gt:.4f}" if gt is not None else "") + "."]
    for name, e in s["backends"].items():
        if e.get("worst"):
            lines += ["", f"## {name}: lowest agreement", ""]
            lines += [f"- {md_cell(w['id'])}: {100 * w['agreement']:.4f} % ({w['disagree']} pixels)"
                      + (f" ![worst {rank}]({w['png']})" if w.get("png") else "")
                      for rank, w in enumerate(e["worst"], 1)]
    if s["failures"]:
        lines += ["", "## Gate failures", ""] + [f"- {md_cell(f)}" for f in s["failures"][:50]]
    run = doc["run"]
    lines += ["", f"Run: executor {run['executor']}, {run['workers']} worker(s) (each running the backends in turn "
              f"on chunks of {run['chunk']} image(s)), {run['computed']} image(s) computed, {run['reused']} reused "
              f"({run['refused_stored']} stored result(s) refused and recomputed"
              + (", unsealed results trusted" if run.get("trust_unsealed") else "") + f"), {run['seconds']} s."]
    return "\n".join(lines) + "\n"
