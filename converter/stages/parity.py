"""parity stage: original vs ONNX vs IR, per pixel, tie-aware, with a gate.

Each backend runs in its own subprocess (2 threads) over the same images; the
parent compares class maps with the original's and, where logits are
available, logit values. The gate (thresholds in the config's `parity`):
for every f32 backend and image, agreement >= min_agreement AND every
disagreeing pixel has an original top-2 logit margin below tie_margin (tau),
i.e. it is a near-tie that rounding may legitimately flip.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np

from converter.data.cityscapes import confusion_matrix, iou_per_class
from converter.errors import ParityFailure, StageError
from converter.data.images import expand_image_args, image_ids, load_rgb, resize_rgb, sample_images
from converter.util.log import info
from converter.records import ONNX_PATH, converted_input_shape, ir_path, verify_build

# name, backend, model path (relative to workdir), input, precision, gated
BACKENDS = [
    ("original", "paddle", "paddle", "rgb-normalized", None, False),
    ("onnxruntime", "onnxruntime", ONNX_PATH, "bgr-255", None, True),
    ("openvino-fp32-f32", "openvino", ir_path("FP32"), "bgr-255", "f32", True),
    ("openvino-fp32-default", "openvino", ir_path("FP32"), "bgr-255", None, False),
    ("openvino-fp16-default", "openvino", ir_path("FP16"), "bgr-255", None, False),
]


def stage_of(rel):
    """The stage that wrote a backend's model (its path relative to the workdir)."""
    return "export" if rel == "paddle" else rel.split(os.sep)[0]


def check_artifacts(workdir, selected):
    """Every model the selected backends load, verified against its stage's record."""
    verify_build(workdir, sorted({stage_of(b[2]) for b in selected}))


def _peak_rss_mb(rusage):
    return round(rusage.ru_maxrss / 1024, 1)  # Linux reports KiB


def _die_with_parent():
    """In the worker, before exec: Linux sends it SIGKILL when the parent
    dies, even by SIGKILL, so no 3 GB worker outlives an interrupted run."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_backend(spec):
    """Run one parity worker; return its JSON line plus wall time and the
    child's own peak RSS (os.wait4 gives the rusage of that pid alone).
    An interrupt (SIGINT, or SIGTERM turned into one by the CLI) terminates
    and reaps the worker before it propagates."""
    spec_path = os.path.join(spec["out"], "spec.json")
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "converter.runners.worker", spec_path],
                                stdout=out, stderr=err, env=env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise StageError(f"{spec['name']} backend failed (exit {proc.returncode}): {tail[0][:200]}")
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise StageError(f"{spec['name']} backend printed no result") from None
    result.update(wall_seconds=round(wall, 1), peak_rss_mb=_peak_rss_mb(rusage))
    return result


def class_iou(ref, got, num_classes):
    ious = iou_per_class(confusion_matrix(ref, got, num_classes))
    return {c: float(v) for c, v in enumerate(ious) if not np.isnan(v)}


def top2_margin(logits):
    """Top-1 minus top-2 logit along axis 0 ([C, ...] -> [...])."""
    part = np.partition(logits, -2, axis=0)
    return part[-1] - part[-2]


def compare(ref_classes, got_classes, ref_logits=None, got_logits=None, num_classes=19, top=5):
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


def run_parity(config, workdir, images=None, threads=2, backends=None):
    """Returns (paths, record); raises ParityFailure when the gate fails."""
    from converter.stages.parity_report import write_report

    selected = [b for b in BACKENDS if not backends or b[0] in backends or b[0] == "original"]
    check_artifacts(workdir, selected)
    paths = expand_image_args(images) if images else sample_images()
    shape = converted_input_shape(workdir)
    width, height = shape[3], shape[2]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        inputs = []
        for i, path in enumerate(paths):
            rgb = resize_rgb(load_rgb(path), width, height)
            inputs.append(os.path.join(tmp, f"input_{i}.npy"))
            np.save(inputs[-1], rgb)
        runs = {}
        for name, backend, rel, layout, precision, gated in selected:
            out = os.path.join(tmp, name)
            os.makedirs(out)
            info(f"parity: {name} ({backend}) on {len(paths)} image(s) at {width}x{height}...")
            spec = {"name": name, "backend": backend, "model": os.path.join(workdir, rel), "inputs": inputs,
                    "out": out, "input": layout, "precision": precision, "threads": threads,
                    "logits": True}
            runs[name] = run_backend(spec)
            runs[name].update(gated=gated, input=layout, model=rel)
            info(f"parity: {name}: load {runs[name]['load_seconds']} s, "
                 f"infer {runs[name]['infer_seconds']} s, peak RSS {runs[name]['peak_rss_mb']} MB")
        results = {}
        maps = []
        ids = image_ids(paths)  # two scene.jpg from different folders are two images
        for i, path in enumerate(paths):
            ref = np.load(os.path.join(tmp, "original", f"{i}_classes.npy"))
            # The original's logits come from the same run as its class map
            # (an extra fetch of the ArgMax's input), so the margins describe
            # exactly the scores that produced `ref`.
            ref_logits = np.load(os.path.join(tmp, "original", f"{i}_logits.npy"))
            image_maps = {"input": np.load(inputs[i]), "original": ref}
            for name, *_rest in selected:
                if name == "original":
                    continue
                got = np.load(os.path.join(tmp, name, f"{i}_classes.npy"))
                lp = os.path.join(tmp, name, f"{i}_logits.npy")
                got_logits = np.load(lp) if os.path.exists(lp) else None
                entry = results.setdefault(name, {"gated": runs[name]["gated"], "images": {}})
                entry["images"][ids[i]] = compare(ref, got, ref_logits, got_logits,
                                                                  config.num_classes)
                image_maps[name] = got
            maps.append((ids[i], image_maps))
        failures = gate(results, config)
        record = {"stage": "parity", "input_size": [width, height], "threads": threads,
                  "images": [os.path.abspath(p) for p in paths], "runs": runs, "results": results,
                  "thresholds": {"min_agreement": config.min_agreement, "tie_margin": config.tie_margin},
                  "passed": not failures, "failures": failures,
                  "seconds": round(time.perf_counter() - start, 1)}
        out_paths = write_report(config, workdir, record, maps)
    if failures:
        raise ParityFailure(f"{len(failures)} gate failure(s); first: {failures[0]}; "
                            f"report: {os.path.join(workdir, 'parity', 'report.md')}")
    return out_paths, record
