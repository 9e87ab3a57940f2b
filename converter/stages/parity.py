"""parity stage: original vs ONNX vs IR, per pixel, tie-aware, with a gate.

Each backend runs in its own subprocess (2 threads) over the same images; the
parent compares class maps with the original's and, where logits are
available, logit values. The gate (thresholds in the config's `parity`):
for every f32 backend and image, agreement >= min_agreement AND every
disagreeing pixel has an original top-2 logit margin below tie_margin (tau),
i.e. it is a near-tie that rounding may legitimately flip.
"""
import os
import tempfile
import time
from collections import Counter

import numpy as np

from converter.data.cityscapes import confusion_matrix, iou_per_class
from converter.errors import ParityFailure
from converter.data.images import expand_image_args, image_ids, load_rgb, resize_rgb, sample_images
from converter.util.log import info
from converter.backends import REFERENCE, select
from converter.records import converted_input_shape, verify_build
from converter.runners.process import run_worker


def check_artifacts(workdir, selected):
    """Every model the selected backends load, verified against its stage's record."""
    verify_build(workdir, sorted({b.stage for b in selected}))


def class_iou(ref, got, num_classes):
    ious = iou_per_class(confusion_matrix(ref, got, num_classes))
    return {c: float(v) for c, v in enumerate(ious) if not np.isnan(v)}


def top2_margin(logits):
    """Top-1 minus top-2 logit along axis 0 ([C, ...] -> [...])."""
    part = np.partition(logits, -2, axis=0)
    return part[-1] - part[-2]


def compare(ref_classes, got_classes, ref_logits, got_logits, num_classes, top=5):
    differ = ref_classes != got_classes
    n_diff = int(differ.sum())
    flips = Counter(zip(ref_classes[differ].tolist(), got_classes[differ].tolist())).most_common(top)
    ious = class_iou(ref_classes, got_classes, num_classes)
    result = {
        "pixels": int(ref_classes.size), "disagree": n_diff,
        "agreement": float(1 - n_diff / ref_classes.size),
        "top_flips": [{"from": int(a), "to": int(b), "count": int(c)} for (a, b), c in flips],
        "class_iou": {str(k): round(v, 6) for k, v in ious.items()},
        "mean_iou": float(np.mean(list(ious.values()))) if ious else 1.0,
    }
    if ref_logits is not None:
        # Margins only where the maps differ: a [19, n_diff] slice, not the
        # whole [19, H, W] volume.
        margins = top2_margin(ref_logits[:, differ]) if n_diff else np.zeros(0, np.float32)
        result["max_flip_margin"] = float(margins.max()) if n_diff else 0.0
        result["flip_margins_p50"] = float(np.median(margins)) if n_diff else 0.0
    if ref_logits is not None and got_logits is not None:
        # float32 differences are exact to within one ulp of the logits, far
        # below anything reported; the mean accumulates in float64.
        err = np.abs(np.asarray(got_logits, np.float32) - np.asarray(ref_logits, np.float32))
        abs_max, abs_mean = float(err.max()), float(err.mean(dtype=np.float64))
        p99 = float(np.percentile(err, 99))
        scale = float(np.abs(ref_logits).max()) or 1.0
        result["logit_error"] = {
            "abs_max": abs_max, "abs_mean": abs_mean, "abs_p99": p99,
            "rel_max": abs_max / scale, "rel_mean": abs_mean / scale,
            "rel_p99": p99 / scale, "ref_abs_max": scale,
        }
    return result


def gate(results, config):
    """Return the list of failures (strings) for the gated backends."""
    failures = []
    for backend, per_image in results.items():
        if not per_image["gated"]:
            continue
        for image, m in per_image["images"].items():
            if m["agreement"] < config.min_agreement:
                failures.append(f"{backend} on {image}: agreement {m['agreement']:.6%} "
                                f"< {config.min_agreement:.4%}")
            if m.get("max_flip_margin", 0.0) >= config.tie_margin:
                failures.append(f"{backend} on {image}: a pixel with top-2 margin "
                                f"{m['max_flip_margin']:.4g} >= tau {config.tie_margin} flipped")
    return failures


def run(config, workdir, images=None, threads=2, backends=None):
    """The parity stage; raises ParityFailure (exit 10) when a gate fails,
    after writing the report."""
    from converter.stages import StageResult

    paths, record = run_parity(config, workdir, images, threads, backends)
    return StageResult("parity", paths, record)


def run_parity(config, workdir, images=None, threads=2, backends=None):
    """Returns (paths, record); raises ParityFailure when the gate fails.
    backends: names from the registry (default all); the reference always runs."""
    from converter.stages.parity_report import write_report

    selected = select(backends, with_reference=True)
    check_artifacts(workdir, selected)
    paths = expand_image_args(images) if images else sample_images()
    shape = converted_input_shape(workdir, config)
    width, height = shape[3], shape[2]
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
        results = {}
        maps = []
        ids = image_ids(paths)  # two scene.jpg from different folders are two images
        for i, path in enumerate(paths):
            ref_classes = np.load(os.path.join(tmp, ref, f"{i}_classes.npy"))
            # The reference's logits come from the same run as its class map
            # (an extra fetch of the ArgMax's input), so the margins describe
            # exactly the scores that produced its classes.
            ref_logits = np.load(os.path.join(tmp, ref, f"{i}_logits.npy"))
            image_maps = {"input": np.load(inputs[i]), "reference": ref_classes}
            for backend in selected:
                if backend is REFERENCE:
                    continue
                got = np.load(os.path.join(tmp, backend.name, f"{i}_classes.npy"))
                got_logits = np.load(os.path.join(tmp, backend.name, f"{i}_logits.npy"))
                entry = results.setdefault(backend.name, {"gated": backend.gated, "images": {}})
                entry["images"][ids[i]] = compare(ref_classes, got, ref_logits, got_logits, config.num_classes)
                image_maps[backend.name] = got
            maps.append((ids[i], image_maps))
        failures = gate(results, config)
        record = {"stage": "parity", "reference": ref, "input_size": [width, height], "threads": threads,
                  "images": [os.path.abspath(p) for p in paths], "runs": runs, "results": results,
                  "thresholds": {"min_agreement": config.min_agreement, "tie_margin": config.tie_margin},
                  "passed": not failures, "failures": failures,
                  "seconds": round(time.perf_counter() - start, 1)}
        out_paths = write_report(config, workdir, record, maps)
    if failures:
        raise ParityFailure(f"{len(failures)} gate failure(s); first: {failures[0]}; "
                            f"report: {os.path.join(workdir, 'parity', 'report.md')}")
    return out_paths, record
