"""One backend in its own process: `python -m converter.parity_worker SPEC.json`.

SPEC: {"backend", "model", "inputs": [npy of uint8 RGB HxWx3], "out": dir,
       "input": "rgb-normalized" | "bgr-255", "precision": "f32" | null,
       "logits": bool, "threads": int}
For each input i it writes out/i_classes.npy (int32 [H,W]) and, when asked,
out/i_logits.npy (float32 [19,H,W]); then prints one JSON line with timings.
Converted models only expose the argmax; for logits we add the ArgMax's input
as an extra output, in memory, without touching the artifact.
"""
import json
import os
import sys
import time

import numpy as np


def _onnx_with_logits(path):
    import onnx

    model = onnx.load(path)
    argmax = next(n for n in model.graph.node if n.op_type == "ArgMax")
    model.graph.output.append(onnx.helper.make_tensor_value_info(argmax.input[0], onnx.TensorProto.FLOAT, None))
    return model.SerializeToString()


def _load(spec):
    backend, path, threads = spec["backend"], spec["model"], spec["threads"]
    if backend == "onnxruntime" and spec["logits"]:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(_onnx_with_logits(path), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]

        def infer(x):
            classes, logits = session.run(names, {"x": x})
            return classes, logits
        return infer, {"threads": threads}
    if backend == "openvino":
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        if spec["logits"]:
            argmax = next(op for op in model.get_ordered_ops() if op.get_type_name() in ("TopK", "ArgMax"))
            model.add_outputs([argmax.input_value(0)])
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if spec.get("precision"):
            config["INFERENCE_PRECISION_HINT"] = spec["precision"]
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        from .runners.ov_runner import precision_name

        effective = precision_name(compiled)

        def infer(x):
            result = request.infer({0: x})
            outs = [result[o] for o in compiled.outputs]
            return outs[0], (outs[1] if len(outs) > 1 else None)
        return infer, {"threads": threads, "requested_precision": spec.get("precision") or "default",
                       "effective_precision": effective}
    from .runners import make_runner

    runner = make_runner(backend, path, threads=threads)

    def infer(x):
        out = next(iter(runner.infer(x).values()))
        return (out, None) if out.ndim == 3 else (None, out)
    return infer, dict(runner.info)


def main(spec_path):
    with open(spec_path) as fh:
        spec = json.load(fh)
    from .images import bgr_nchw, normalized_rgb_nchw

    start = time.perf_counter()
    infer, info = _load(spec)
    load_s = time.perf_counter() - start
    if spec.get("bench_runs"):
        return _bench(spec, infer, info, load_s)
    times = []
    for i, path in enumerate(spec["inputs"]):
        rgb = np.load(path)
        x = normalized_rgb_nchw(rgb) if spec["input"] == "rgb-normalized" else bgr_nchw(rgb)
        t = time.perf_counter()
        classes, logits = infer(x)
        times.append(time.perf_counter() - t)
        if classes is None:
            classes = logits.argmax(axis=1).astype(np.int32)
        np.save(os.path.join(spec["out"], f"{i}_classes.npy"), np.asarray(classes, np.int32)[0])
        if logits is not None and spec["logits"]:
            np.save(os.path.join(spec["out"], f"{i}_logits.npy"), np.asarray(logits, np.float32)[0])
    print(json.dumps({"load_seconds": round(load_s, 2), "infer_seconds": [round(t, 2) for t in times],
                      "info": info}))
    return 0


def _bench(spec, infer, info, load_s):
    """First-run latency, then the median of bench_runs steady runs, on inputs[0]."""
    from .images import bgr_nchw, normalized_rgb_nchw

    rgb = np.load(spec["inputs"][0])
    x = normalized_rgb_nchw(rgb) if spec["input"] == "rgb-normalized" else bgr_nchw(rgb)
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
    from .paddle_env import import_paddle

    if json.load(open(sys.argv[1]))["backend"] == "paddle":
        import_paddle()
    sys.exit(main(sys.argv[1]))
