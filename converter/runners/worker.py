"""One backend in its own process: `python -m converter.parity_worker SPEC.json`.

SPEC: {"backend", "model", "inputs": [npy of uint8 RGB HxWx3], "out": dir,
       "input": "rgb-normalized" | "bgr-255", "precision": "f32" | null,
       "logits": bool, "threads": int, "bench_runs": int (bench only)}
For each input i it writes out/i_classes.npy (int32 [H,W]) and, when asked,
out/i_logits.npy (float32 [19,H,W]); then prints one JSON line with timings.
Every model exposes only the argmax; for logits the runner adds the ArgMax's
input as an extra output (in memory, or in a temporary copy of the Paddle
program), without touching the artifact.
"""
import json
import os
import sys
import time

import numpy as np


def _load(spec):
    """A runner for the spec's backend; infer(x) -> (classes, logits or None)."""
    from converter.runners import make_runner

    options = {"logits": spec["logits"]}
    if spec["backend"] == "openvino":
        options["precision"] = spec.get("precision")
    if spec["backend"] == "paddle" and spec.get("bench_runs"):
        options["fuse_residual_add"] = True  # steady-state speed; see paddle_runner
    runner = make_runner(spec["backend"], spec["model"], threads=spec["threads"], **options)

    def infer(x):
        out = runner.infer(x)
        return out["argmax_0.tmp_0"], out.get("logits")
    return infer, dict(runner.info)


def main(spec_path):
    with open(spec_path) as fh:
        spec = json.load(fh)
    from converter.data.images import INPUT_LAYOUTS

    prepare = INPUT_LAYOUTS[spec["input"]]
    start = time.perf_counter()
    infer, info = _load(spec)
    load_s = time.perf_counter() - start
    if spec.get("bench_runs"):
        return _bench(spec, prepare(np.load(spec["inputs"][0])), infer, info, load_s)
    times = []
    for i, path in enumerate(spec["inputs"]):
        x = prepare(np.load(path))
        t = time.perf_counter()
        classes, logits = infer(x)
        times.append(time.perf_counter() - t)
        np.save(os.path.join(spec["out"], f"{i}_classes.npy"), np.asarray(classes, np.int32)[0])
        if logits is not None and spec["logits"]:
            np.save(os.path.join(spec["out"], f"{i}_logits.npy"), np.asarray(logits, np.float32)[0])
    print(json.dumps({"load_seconds": round(load_s, 2), "infer_seconds": [round(t, 2) for t in times],
                      "info": info}))
    return 0


def _bench(spec, x, infer, info, load_s):
    """First-run latency, then the median of bench_runs steady runs, on x."""
    t = time.perf_counter()
    infer(x)
    first = time.perf_counter() - t
    times = []
    for _ in range(spec["bench_runs"]):
        t = time.perf_counter()
        infer(x)
        times.append(time.perf_counter() - t)
    print(json.dumps({"load_seconds": round(load_s, 2), "first_seconds": round(first, 3),
                      "steady_seconds": [round(v, 3) for v in times],
                      "median_seconds": round(float(np.median(times)), 3), "info": info}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the parent reports our last stderr line: make it one line with the cause
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: {type(exc).__name__}: {first[:300]}", file=sys.stderr)
        sys.exit(1)
