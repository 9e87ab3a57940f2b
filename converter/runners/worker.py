"""One runner in its own process: `python -m converter.runners.worker SPEC.json`.

Parity and bench (and anything else that compares or times backends) run
each backend here, so that its memory and threads are its own and its peak
RSS can be measured. The worker does one thing for every consumer:

SPEC: {"runtime", "model", "precision", "threads", "logits": bool,
       "options": {runner keyword arguments}, "contract": data.images input
       contract, "output": the class-map output's name,
       "inputs": [npy of uint8 RGB HxWx3], "repeat": runs per input,
       "save": bool, "out": folder}

Each input is prepared once and run `repeat` times. With save, it writes
out/i_classes.npy (int32 [H,W]) and, with logits, out/i_logits.npy (float32
[C,H,W]) from the last run. Last, it prints one JSON line:
{"load_seconds", "seconds": [[each run's seconds] per input], "info", "peak_rss_mb"}.
"""
import json
import os
import sys
import time

import numpy as np


def main(spec_path):
    from converter.data.images import prepare
    from converter.runners import make_runner

    with open(spec_path) as fh:
        spec = json.load(fh)
    start = time.perf_counter()
    runner = make_runner(spec["runtime"], spec["model"], threads=spec["threads"], logits=spec["logits"],
                         precision=spec["precision"], **spec.get("options", {}))
    load_s = time.perf_counter() - start
    seconds = []
    for i, path in enumerate(spec["inputs"]):
        x = prepare(np.load(path), spec["contract"])
        runs = []
        for _ in range(spec.get("repeat", 1)):
            t = time.perf_counter()
            out = runner.infer(x)
            runs.append(round(time.perf_counter() - t, 3))
        seconds.append(runs)
        if spec.get("save"):
            np.save(os.path.join(spec["out"], f"{i}_classes.npy"), np.asarray(out[spec["output"]], np.int32)[0])
            if spec["logits"]:
                np.save(os.path.join(spec["out"], f"{i}_logits.npy"), np.asarray(out["logits"], np.float32)[0])
    print(json.dumps({"load_seconds": round(load_s, 2), "seconds": seconds, "info": runner.info,
                      "peak_rss_mb": peak_rss_mb()}))
    return 0


def peak_rss_mb():
    """This process's own peak RSS (VmHWM, reset by exec). The parent's
    rusage would also count the parent's size at fork time, which is large
    when `convert` has run the export in-process first."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the parent reports our last stderr line: make it one line with the cause
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: {type(exc).__name__}: {first[:300]}", file=sys.stderr)
        sys.exit(1)
