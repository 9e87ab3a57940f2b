"""bench: latency and memory of each backend, against the machine's sgemm roofline.

Each backend runs in its own subprocess (like parity): load, one first run,
then N steady runs; we report the first-run latency, the median steady
latency and the process's peak RSS. The roofline is the best f32 GEMM rate
numpy reaches here (2048^3 sgemm up to four threads, 4096^3 above, best of 5, in a subprocess with
OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset so that OpenBLAS picks its own
kernel). The model's FLOPs are 2 x the multiply-accumulates paddle.flops
counts (324,658,293,504 at 1x3x512x1024), scaled by the pixel count (convs
dominate and scale linearly; the fixture's 1x3x1024x2048 count is exactly 4x).
The roofline is an f32 one for every backend: bf16 and INT8 can exceed it.
Each backend's speed-up is over the FP32 IR at f32 measured in the same run,
and the INT8 target (at most 1/3 of its latency) is checked there.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

from converter.errors import ConverterError
from converter.layout import Workdir
from converter.util.text import md_table_head
from converter.util.fsutil import write_bytes_atomic, write_json_atomic
from converter.data.images import sample_images
from converter.util.log import info
from converter.backends import check_artifacts, select
from converter.records import converted_input_shape

F32_IR = "openvino-fp32-f32"
TARGETS = {"openvino-int8-default": 1 / 3}  # latency, at most this fraction of F32_IR's

# Steady-state speed is what bench measures, so Paddle Inference runs with
# every oneDNN pass (parity and predict skip one that costs 11.5 s to apply).
RUNNER_OPTIONS = {"paddle": {"fuse_residual_add": True}}
# The roofline's matrix size: 2048 reaches the same f32 throughput as 4096 on
# two threads here (159.9 against 157.1 GFLOP/s, Zen 3, avx2) in a sixth of the
# time (1.0 s against 6.3 s); more threads get the larger problem.
SGEMM = """
import json, sys, time, numpy as np
n = int(sys.argv[1])
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(json.dumps({"n": n, "seconds": best, "gflops": 2 * n ** 3 / best / 1e9}))
"""


def sgemm_gflops(threads):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    size = 2048 if threads <= 4 else 4096
    out = subprocess.run([sys.executable, "-c", SGEMM, str(size)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_flops(config, shape):
    """None for a model whose FLOPs the config does not know (a user's inference model)."""
    if config.flops_512x1024 is None:
        return None
    macs = config.flops_512x1024 * (shape[2] * shape[3]) / (512 * 1024)
    return 2 * macs


def _num(value, fmt):
    return "-" if value is None else format(value, fmt)


def markdown(record):
    lines = ["# Benchmark", "",
             f"Input {'x'.join(map(str, record['input_shape']))}, {record['threads']} threads, "
             f"{record['runs']} steady runs. Model: "
             + (f"{record['model_gflop']:.0f} GFLOP" if record["model_gflop"] else "unknown FLOPs") + " per run. "
             f"Roofline: numpy f32 sgemm {record['sgemm']['gflops']:.0f} GFLOP/s (an f32 roofline, "
             "which bf16 and INT8 may exceed).", "",
             *md_table_head("backend", "load s", "first run s", "median s", f"speed-up over {F32_IR}", "GFLOP/s",
                            "fraction of f32 roofline", "peak RSS MB", "precision")]
    for name, r in record["backends"].items():
        speedup = f"{r['speedup_over_f32_ir']:.2f}x" if r.get("speedup_over_f32_ir") else "-"
        lines.append(f"| {name} | {r['load_seconds']} | {r['first_seconds']} | {r['median_seconds']} | {speedup} | "
                     f"{_num(r['gflops'], '.0f')} | {_num(r['roofline_fraction'], '.2f')} | {r['peak_rss_mb']} | "
                     f"{r['info'].get('effective_precision', 'f32')} |")
    for name, t in record.get("targets", {}).items():
        lines += ["", f"Target: {name} latency <= {t['max_fraction']:.3f} of {F32_IR}'s: "
                      f"{t['fraction']:.3f}, **{'met' if t['met'] else 'NOT MET'}**."]
    sysinfo = record.get("system")
    if sysinfo:
        lines += ["", f"CPU: {sysinfo['cpu']} ({sysinfo['cores']} cores); flags: "
                  + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in sysinfo["cpu_flags"].items()) + "."]
    text = "\n".join(lines) + "\n"
    if record.get("engine"):
        from converter.commands.bench_engine import markdown as engine_markdown

        text += engine_markdown(record["engine"])
    return text


def _call(executor, method, *args):
    """One call on the executor's only worker, waited for."""
    handle = executor.submit(0, method, *args)
    while True:
        for done, value in executor.wait():
            if done == handle:
                return value


def _measure(backend, *, spec, item, runs):
    """One backend in a worker process of its own (the engine's worker), so
    that its memory and threads are its own: loaded, run once, then `runs`
    steady runs on the same input. Its load seconds, run seconds, runner
    info, peak RSS and wall seconds."""
    from converter.errors import WorkerCallFailed, StageError, WorkerLost
    from converter.engine.executors import LocalExecutor

    start = time.perf_counter()
    try:
        executor = LocalExecutor([spec])
    except (WorkerCallFailed, WorkerLost) as exc:
        raise StageError(f"{backend.name} backend failed: {exc}") from None
    try:
        _call(executor, "begin", 0, item)
        load = _call(executor, "load", backend.name)
        seconds = _call(executor, "time", 0, 1 + runs)
        described = _call(executor, "describe")
    except (WorkerCallFailed, WorkerLost) as exc:
        executor.close(kill=True)
        raise StageError(f"{backend.name} backend failed: {exc}") from None
    except BaseException:
        executor.close(kill=True)
        raise
    executor.close()
    return {"load_seconds": load["load_seconds"], "seconds": seconds, "info": described["info"][backend.name],
            "peak_rss_mb": described["peak_rss_mb"], "wall_seconds": round(time.perf_counter() - start, 1)}


def _spec(backend, *, workdir, config, records, shape, threads):
    """The engine worker's spec for one backend, as bench runs it: class map only, the runner's steady options."""
    from converter.engine.scheduler import backend_spec

    one = dict(backend_spec(backend, workdir, config, records), logits=False,
               options=RUNNER_OPTIONS.get(backend.runtime, {}))
    return {"backends": {backend.name: one}, "threads": threads, "size": [shape[3], shape[2]],
            "num_classes": config.num_classes, "keep_maps": False}


def run_bench(config, workdir, *, shape=None, runs=5, threads=2, backends=None, engine=False, engine_images=2):
    """engine: also run the validate engine on the same backends (the
    reference among them) and hold it to these figures (bench_engine)."""
    chosen, left_out, records = check_artifacts(workdir, config, select(backends, with_reference=engine),
                                                named=bool(backends))
    for name, why in left_out.items():
        info(f"bench: {name} left out: {why}")
    static = converted_input_shape(workdir, required=True)
    shape = tuple(shape or static)
    if shape != static:
        raise ConverterError(f"the artifacts in {workdir} were built for {list(static)}, not {list(shape)}; "
                             "rebuild them with that --input-shape")
    info("bench: measuring sgemm throughput...")
    sgemm = sgemm_gflops(threads)
    flops = model_flops(config, shape)
    results = {}
    sample = sample_images()[0]
    with open(sample, "rb") as fh:
        item = {"id": os.path.basename(sample), "name": sample, "image": fh.read(), "label": None}
    for backend in chosen:
        name = backend.name
        info(f"bench: {name}...")
        # One first run, then the steady runs, on the same input.
        r = _measure(backend, spec=_spec(backend, workdir=workdir, config=config, records=records, shape=shape,
                                         threads=threads), item=item, runs=runs)
        times = r.pop("seconds")
        r.update(first_seconds=times[0], steady_seconds=times[1:], median_seconds=round(float(np.median(times[1:])), 3))
        r["gflops"] = flops / r["median_seconds"] / 1e9 if flops else None
        r["roofline_fraction"] = r["gflops"] / sgemm["gflops"] if flops else None
        results[name] = r
        info(f"bench: {name}: first {r['first_seconds']} s, median {r['median_seconds']} s, "
             f"{_num(r['roofline_fraction'], '.2f')} of roofline, peak RSS {r['peak_rss_mb']} MB")
    base = results.get(F32_IR)
    targets = {}
    for name, r in results.items():
        if base:
            r["speedup_over_f32_ir"] = base["median_seconds"] / r["median_seconds"]
        if base and name in TARGETS:
            fraction = r["median_seconds"] / base["median_seconds"]
            targets[name] = {"fraction": fraction, "max_fraction": TARGETS[name], "met": fraction <= TARGETS[name]}
    record = {"stage": "bench", "input_shape": list(shape), "runs": runs, "threads": threads,
              "model_gflop": flops / 1e9 if flops else None, "sgemm": sgemm, "backends": results, "targets": targets,
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from converter.stages.parity_report import system_info

    record["system"] = system_info()
    if engine:
        from converter.commands.bench_engine import engine_figures

        record["engine"] = engine_figures(config, workdir, record, chosen, engine_images, threads)
    workdir = Workdir.of(workdir)
    os.makedirs(workdir.bench, exist_ok=True)
    markdown_path = workdir.bench_markdown
    write_json_atomic(workdir.bench_record, record)
    write_bytes_atomic(markdown_path, markdown(record).encode())
    from converter.stages import StageResult

    return StageResult("bench", [workdir.bench_record, markdown_path], record)
