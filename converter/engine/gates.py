"""What parity measures per image, and the gates it applies.

Every gated backend has a budget (backends.Backend.budget):

- "f32" (ONNX Runtime, the FP32 IR at f32): agreement >= min_agreement AND
  every disagreeing pixel has an original top-2 logit margin below
  tie_bound() (tau, or for logits too large for tau to be resolved in f32,
  the f32 budget's rel p99 of the image's largest |logit|), i.e. is a
  near-tie that rounding may legitimately flip, AND the f32 numeric budget
  below (a bound at the level of f32 rounding).
- a reduced precision ("bf16", "fp16", "int8"): a numeric budget that does
  not depend on how confident the weights are. The absolute logit error,
  divided by the image's largest |original logit|, must stay within the
  config's parity.budgets[precision] at its 99th percentile (over all pixels
  and classes) and at its maximum. Agreement is reported, never gated: maps
  of weights with many near-ties flip many pixels under any rounding.
- with ground truth, every gated backend also has a task budget: its mIoU
  over all the images may be at most parity.max_miou_drop below the
  original's on the same images.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from typing import Any

from converter.data.cityscapes import confusion_matrix, iou_per_class


def class_iou(ref: np.ndarray, got: np.ndarray, num_classes: int) -> dict:
    ious = iou_per_class(confusion_matrix(ref, got, num_classes))
    return {c: float(v) for c, v in enumerate(ious) if not np.isnan(v)}


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit along axis 0 ([C, ...] -> [...])."""
    part = np.partition(logits, -2, axis=0)
    return part[-1] - part[-2]


def logit_error(ref_logits: np.ndarray, got_logits: np.ndarray) -> dict:
    """Absolute and relative (to the image's largest |reference logit|)
    error statistics. float32 differences are exact to within one ulp of the
    logits, far below anything reported; the mean accumulates in float64."""
    ref, got = np.asarray(ref_logits, np.float32), np.asarray(got_logits, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - ref)
    abs_max, abs_mean = float(err.max()), float(err.mean(dtype=np.float64))
    p99 = float(np.percentile(err, 99))
    scale = float(np.abs(ref).max()) or 1.0
    return {"abs_max": abs_max, "abs_mean": abs_mean, "abs_p99": p99,
            "rel_max": abs_max / scale, "rel_mean": abs_mean / scale,
            "rel_p99": p99 / scale, "ref_abs_max": scale,
            # NaN or inf (an f32 overflow): say where, not only "error nan"
            "ref_nonfinite": int(ref.size - np.isfinite(ref).sum()),
            "got_nonfinite": int(got.size - np.isfinite(got).sum())}


def compare(ref_classes: np.ndarray, got_classes: np.ndarray, ref_logits: np.ndarray | None,
            got_logits: np.ndarray | None, num_classes: int, top: int = 5) -> dict:
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
        result["logit_error"] = logit_error(ref_logits, got_logits)
    return result


def miou(conf: np.ndarray) -> tuple[float | None, np.ndarray]:
    """(the mean IoU over the classes present, or None; the per-class IoU)."""
    ious = iou_per_class(conf)
    return (float(np.nanmean(ious)) if np.isfinite(ious).any() else None), ious


def task_result(ref_conf: np.ndarray, got_conf: np.ndarray, class_names: list[str]) -> dict:
    """mIoU against ground truth of a backend and of the original, summed
    over the same images, with each class's drop (positive: worse)."""
    ref_miou, ref_ious = miou(ref_conf)
    got_miou, got_ious = miou(got_conf)
    per_class = {}
    for name, r, g in zip(class_names, ref_ious, got_ious):
        if not (np.isnan(r) and np.isnan(g)):
            r, g = (0.0 if np.isnan(r) else float(r)), (0.0 if np.isnan(g) else float(g))
            per_class[name] = {"original": r, "converted": g, "drop": r - g}
    drop = None if ref_miou is None or got_miou is None else ref_miou - got_miou
    return {"miou": got_miou, "original_miou": ref_miou, "miou_drop": drop, "per_class": per_class,
            "pixels": int(got_conf.sum())}


def tie_bound(config: Any, ref_abs_max: float) -> float:
    """The top-2 margin below which a flipped pixel is a near-tie, on an image
    whose largest |original logit| is ref_abs_max. tau is absolute; on logits
    of 1e6 (a PaddleSeg Deeplabv3-R101 export with its own initialisation)
    one f32 ulp is 0.06 and tau 0.01 is below what f32 resolves, so the bound
    is then what the f32 budget calls typical rounding: its rel p99 of the
    image's scale. Unchanged for logits up to tau / rel_p99 (100)."""
    return max(config.tie_margin, config.budgets["f32"]["rel_p99"] * ref_abs_max)


def _nonfinite(backend: str, image: str, err: dict) -> str:
    if err.get("ref_nonfinite"):
        return (f"{backend} on {image}: the original's own logits hold {err['ref_nonfinite']} NaN or inf "
                "value(s): there is nothing to compare against (an f32 overflow in the model itself?)")
    return (f"{backend} on {image}: the converted logits hold {err['got_nonfinite']} NaN or inf value(s) where "
            "the original's are finite (diagnose names the first tensor that overflows)")


def backend_failed(name: str, failures: list[str]) -> bool:
    """Whether gate()'s failures name this backend (each starts with it)."""
    return any(f.startswith(name + " ") or f.startswith(name + ":") for f in failures)


def gate(results: dict, config: Any) -> list[str]:
    """The list of failures (strings) for the gated backends.
    results: {backend: {gated, budget, images: {id: compare()}, task?}}."""
    failures = []
    for backend, entry in results.items():
        if not entry["gated"]:
            continue
        budget = entry.get("budget") or "f32"
        for image, m in entry["images"].items():
            err = m.get("logit_error")
            if err and (err.get("ref_nonfinite") or err.get("got_nonfinite")):
                failures.append(_nonfinite(backend, image, err))
                continue
            if budget == "f32":
                if m["agreement"] < config.min_agreement:
                    failures.append(f"{backend} on {image}: agreement {m['agreement']:.6%} "
                                    f"< {config.min_agreement:.4%}")
                tie = tie_bound(config, (err or {}).get("ref_abs_max", 0.0))
                if not m.get("max_flip_margin", 0.0) < tie:
                    failures.append(f"{backend} on {image}: a pixel with top-2 margin "
                                    f"{m['max_flip_margin']:.4g} >= its near-tie bound {tie:.4g} flipped")
            bound = config.budgets[budget]
            if err is None:
                failures.append(f"{backend} on {image}: no logits to check the {budget} budget against")
                continue
            for stat in ("rel_p99", "rel_max"):
                if not err[stat] <= bound[stat]:  # NaN fails too
                    failures.append(f"{backend} on {image}: relative logit error {stat} {err[stat]:.4g} "
                                    f"> the {budget} budget {bound[stat]}")
        task = entry.get("task")
        if task and task["miou_drop"] is not None and not task["miou_drop"] <= config.max_miou_drop:
            failures.append(f"{backend}: mIoU against ground truth {task['miou']:.4f} is "
                            f"{task['miou_drop']:.4f} below the original's {task['original_miou']:.4f} "
                            f"(> max drop {config.max_miou_drop})")
    return failures
