"""parity stage: original vs every converted backend, per pixel, with a gate
per precision (the gates: parity_gates).

Each backend runs in its own subprocess (2 threads) over the same images; the
parent compares class maps with the original's and logit values with the
original's logits. With --cityscapes the images come with ground truth, and
each backend's mIoU is compared with the original's (the task budget).
"""
import os
import tempfile
import time

import numpy as np

from converter.data.cityscapes import confusion_matrix
from converter.errors import ParityFailure, StageError
from converter.data.images import expand_image_args, image_ids, load_rgb, resize_rgb, sample_images
from converter.util.log import info
from converter.backends import REFERENCE, select
from converter.records import converted_input_shape, record_path, verify_build
from converter.runners.process import run_worker
from converter.stages.parity_gates import compare, gate, task_result


def check_artifacts(workdir, selected, named=True):
    """Every model the selected backends load, verified against its stage's
    record; returns (the backends to run, {left-out backend: why}).

    When the backends were not named (named=False), an optional one whose
    build is missing or stale (an INT8 IR quantized from an FP32 IR rebuilt
    since) is left out with the reason instead of failing the run: `make
    convert` must not fail on what `make quantize` built before."""
    left_out = {}
    if not named:
        for b in [b for b in selected if b.optional]:
            if not os.path.lexists(record_path(workdir, b.stage)):
                left_out[b.name] = f"no {b.stage} record: run `ocrnet-convert {b.stage}`"
                continue
            try:
                verify_build(workdir, [b.stage])
            except StageError as exc:
                left_out[b.name] = f"{exc} (not gated)"
    kept = [b for b in selected if b.name not in left_out]
    verify_build(workdir, sorted({b.stage for b in kept}))
    return kept, left_out


def _labels(cityscapes, split, limit, width, height):
    """(image paths, a loader of each image's trainIds at the model's size)."""
    from converter.commands.evaluate import find_pairs, load_gt

    pairs = find_pairs(cityscapes, split)[:limit]
    return [p[0] for p in pairs], lambda i: load_gt(pairs[i][1], (width, height))


def run(config, workdir, images=None, threads=2, backends=None, cityscapes=None, split="val", limit=None):
    """The parity stage; raises ParityFailure (exit 10) when a gate fails,
    after writing the report."""
    from converter.stages import StageResult

    paths, record = run_parity(config, workdir, images, threads, backends, cityscapes, split, limit)
    return StageResult("parity", paths, record)


def run_parity(config, workdir, images=None, threads=2, backends=None, cityscapes=None, split="val", limit=None):
    """Returns (paths, record); raises ParityFailure when the gate fails.
    backends: names from the registry (default: all that are built); the
    reference always runs."""
    from converter.stages.parity_report import write_report

    selected, not_built = check_artifacts(workdir, select(backends, with_reference=True), named=bool(backends))
    shape = converted_input_shape(workdir, config)
    width, height = shape[3], shape[2]
    truth = None
    if cityscapes:
        paths, truth = _labels(cityscapes, split, limit, width, height)
    else:
        paths = expand_image_args(images) if images else sample_images()
    start = time.perf_counter()
    ref = REFERENCE.name
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        inputs = []
        for i, path in enumerate(paths):
            rgb = resize_rgb(load_rgb(path), width, height)
            inputs.append(os.path.join(tmp, f"input_{i}.npy"))
            np.save(inputs[-1], rgb)
        runs = {}
        for backend in selected:
            out = os.path.join(tmp, backend.name)
            os.makedirs(out)
            info(f"parity: {backend.name} ({backend.runtime}) on {len(paths)} image(s) at {width}x{height}...")
            run = run_worker(backend, workdir, config, inputs, out, threads, logits=True, save=True)
            runs[backend.name] = {"load_seconds": run["load_seconds"],
                                  "infer_seconds": [t[0] for t in run["seconds"]],
                                  "wall_seconds": run["wall_seconds"], "peak_rss_mb": run["peak_rss_mb"],
                                  "info": run["info"], "gated": backend.gated, "role": backend.role,
                                  "input": backend.side, "model": backend.model}
            info(f"parity: {backend.name}: load {run['load_seconds']} s, "
                 f"infer {runs[backend.name]['infer_seconds']} s, peak RSS {run['peak_rss_mb']} MB")
        results = {b.name: {"gated": b.gated, "budget": b.budget,
                            "precision": runs[b.name]["info"].get("effective_precision", "f32"), "images": {}}
                   for b in selected if b is not REFERENCE}
        num = config.num_classes
        confusions = {b.name: np.zeros((num, num), np.int64) for b in selected}
        maps = []
        ids = image_ids(paths)  # two scene.jpg from different folders are two images
        for i, path in enumerate(paths):
            ref_classes = np.load(os.path.join(tmp, ref, f"{i}_classes.npy"))
            # The reference's logits come from the same run as its class map
            # (an extra fetch of the ArgMax's input), so the margins describe
            # exactly the scores that produced its classes.
            ref_logits = np.load(os.path.join(tmp, ref, f"{i}_logits.npy"))
            image_maps = {"input": np.load(inputs[i]), "reference": ref_classes}
            gt = truth(i) if truth else None
            if gt is not None:
                confusions[ref] += confusion_matrix(gt, ref_classes, num)
            for backend in selected:
                if backend is REFERENCE:
                    continue
                got = np.load(os.path.join(tmp, backend.name, f"{i}_classes.npy"))
                got_logits = np.load(os.path.join(tmp, backend.name, f"{i}_logits.npy"))
                results[backend.name]["images"][ids[i]] = compare(ref_classes, got, ref_logits, got_logits, num)
                if gt is not None:
                    confusions[backend.name] += confusion_matrix(gt, got, num)
                image_maps[backend.name] = got
            maps.append((ids[i], image_maps))
        if truth:
            for name, entry in results.items():
                entry["task"] = task_result(confusions[ref], confusions[name], config.class_names)
        failures = gate(results, config)
        record = {"stage": "parity", "reference": ref, "input_size": [width, height], "threads": threads,
                  "images": [os.path.abspath(p) for p in paths], "runs": runs, "results": results,
                  "not_built": not_built,
                  "labels": {"cityscapes": os.path.abspath(cityscapes), "split": split} if cityscapes else None,
                  "thresholds": {"min_agreement": config.min_agreement, "tie_margin": config.tie_margin,
                                 "budgets": config.budgets, "max_miou_drop": config.max_miou_drop},
                  "passed": not failures, "failures": failures,
                  "seconds": round(time.perf_counter() - start, 1)}
        out_paths = write_report(config, workdir, record, maps)
    if failures:
        raise ParityFailure(f"{len(failures)} gate failure(s); first: {failures[0]}; "
                            f"report: {os.path.join(workdir, 'parity', 'report.md')}")
    return out_paths, record
