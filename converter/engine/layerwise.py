"""Layer by layer: the original's intermediate tensors against a converted model's.

OpenVINO's Paddle frontend and paddle2onnx keep Paddle's variable names on
most tensors, and every runner can return named intermediate tensors
(`taps`). So the original program's float activations, in the order its
ops run, are compared with the converted model's tensors of the same name:
per tensor the largest absolute error, the largest and 99th-percentile
error relative to the original tensor's own largest |value|, and the cosine
similarity. A tensor whose shape differs is compared through an obvious
reshape (the same element count) or transpose (a permutation of its dims),
and listed as unmatched otherwise; so is a name the converted model lacks
(a convolution folded into its BatchNorm, an Add renamed).

Bounded: the tensors are taken in windows whose total size, both models
together, stays within WINDOW_BYTES; each window re-runs both models with
that window's taps only, so memory is a window plus the runtimes, whatever
the number of tensors. first_only stops after the first window with a
tensor over budget.
"""
import itertools
import time

import numpy as np

from converter.util.memory import peak_rss_mb
from converter.util.memory import release_memory

WINDOW_BYTES = 1024 << 20   # per model; peak RSS is about the runtimes plus 4x this (docs/diagnose.md)
GROWTH_FLOOR = 1e-6         # an input error below f32 rounding counts as this, for the growth ratio
CHUNK = 1 << 20


def stats(ref, got):
    ref = np.asarray(ref, np.float32)
    got = np.asarray(got, np.float32)
    err = np.abs(got - ref)
    scale = float(np.abs(ref).max()) or 1.0
    flat = err.reshape(-1)
    k = int(0.99 * (flat.size - 1))
    p99 = float(np.partition(flat, k)[k]) if flat.size else 0.0
    # cosine with float64 sums of float32 chunks: no float64 copy of a tensor of hundreds of MB
    a, b = ref.reshape(-1), got.reshape(-1)
    ab = aa = bb = 0.0
    for i in range(0, a.size, CHUNK):
        x, y = a[i:i + CHUNK], b[i:i + CHUNK]
        ab, aa, bb = ab + float(x @ y), aa + float(x @ x), bb + float(y @ y)
    denom = (aa * bb) ** 0.5
    cosine = ab / denom if denom else (1.0 if aa == bb == 0 else 0.0)
    abs_max = float(err.max()) if err.size else 0.0
    return {"abs_max": abs_max, "rel_max": abs_max / scale, "rel_p99": p99 / scale,
            "rel_mean": float(err.mean(dtype=np.float64)) / scale if err.size else 0.0, "cosine": cosine}


def aligned(ref, got):
    """got brought to ref's layout when an obvious reshape or transpose
    relates them, else None."""
    if got.shape == ref.shape:
        return got
    if got.size != ref.size:
        return None
    if sorted(got.shape) == sorted(ref.shape) and got.ndim == ref.ndim:
        for perm in itertools.permutations(range(got.ndim)):
            moved = np.transpose(got, perm)
            if moved.shape == ref.shape:
                return moved
    squeezed = [d for d in got.shape if d != 1] == [d for d in ref.shape if d != 1]
    return got.reshape(ref.shape) if squeezed else None


def windows(names, sizes, budget=WINDOW_BYTES):
    """names in order, cut where a window's bytes would pass budget."""
    out, current, used = [], [], 0
    for name in names:
        size = sizes.get(name, 0)
        if current and used + size > budget:
            out.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return out + ([current] if current else [])


class Comparison:
    """The original (a Paddle runner factory) and a converted backend (the
    same), compared over the original's activations on one input pair."""

    def __init__(self, activations, *, original, converted, x_original, x_converted, available, sizes, aliases=None):
        """activations: paddle_program.activations(); original/converted:
        callables taps -> runner; available: names the converted model has;
        sizes: bytes per tensor name (for the windows); aliases: {converted
        name: the original tensor whose value it holds} (a conv whose bias
        the converter folded in: paddle_program.bias_adds)."""
        self.order = [(i, name, op, inputs) for i, (name, op, inputs) in enumerate(activations)]
        self.original, self.converted = original, converted
        self.inputs = (x_original, x_converted)
        # original name -> the converted model's name for the same value
        self.source = {n: n for n in available}
        for conv, added in (aliases or {}).items():
            if conv in available and added not in available:
                del self.source[conv]
                self.source[added] = conv
        self.available, self.sizes = set(self.source), sizes
        self.seconds, self.windows, self.log = 0.0, [], None

    def run(self, budget=None, first_only=False, window_bytes=WINDOW_BYTES):
        """(layers, unmatched): layers in order, each {tensor, op, index,
        shape, abs_max, rel_max, rel_p99, cosine}; unmatched: {tensor, op,
        index, why}."""
        start = time.perf_counter()
        wanted = [name for _, name, _, _ in self.order if name in self.available]
        info = {name: (i, op) for i, name, op, _ in self.order}
        layers, unmatched = [], [{"tensor": n, "op": op, "index": i, "why": "not in the converted model"}
                                  for i, n, op, _ in self.order if n not in self.available]
        self.windows = windows(wanted, self.sizes, window_bytes)
        for k, window in enumerate(self.windows, 1):
            t0 = time.perf_counter()
            ref = self.original(window).infer(self.inputs[0])
            release_memory()   # the predictor is gone: its arenas go back before the converted model loads
            t1 = time.perf_counter()
            got = self.converted([self.source[n] for n in window]).infer(self.inputs[1])
            release_memory()
            t2 = time.perf_counter()
            for name in window:
                layer = self._compare(name, info[name], ref.pop(name, None), got.pop(self.source[name], None))
                (layers if "why" not in layer else unmatched).append(layer)
            del ref, got
            release_memory()
            if self.log:
                self.log(f"diagnose: window {k}/{len(self.windows)}: {len(window)} tensors, original {t1 - t0:.1f} s, "
                         f"converted {t2 - t1:.1f} s, comparison {time.perf_counter() - t2:.1f} s, "
                         f"peak RSS so far {peak_rss_mb()} MB")
            if first_only and budget and any(over(layer, budget) for layer in layers):
                break
        self.seconds = round(time.perf_counter() - start, 1)
        return sorted(layers, key=lambda l: l["index"]), sorted(unmatched, key=lambda u: u["index"])


    @staticmethod
    def _compare(name, where, a, b):
        """One tensor's figures, or why it could not be compared."""
        i, op = where
        if a is None or b is None:
            side = "the original" if a is None else "the converted model"
            return {"tensor": name, "op": op, "index": i, "why": f"{side} returned no value for it"}
        aligned_b = aligned(np.asarray(a), np.asarray(b))
        if aligned_b is None:
            return {"tensor": name, "op": op, "index": i, "why": "no obvious reshape or transpose relates "
                    f"{list(np.shape(b))} to {list(np.shape(a))}"}
        return dict(stats(a, aligned_b), tensor=name, op=op, index=i, shape=list(np.shape(a)))


def over(layer, budget):
    return not (layer["rel_p99"] <= budget["rel_p99"] and layer["rel_max"] <= budget["rel_max"])


def add_growth(layers, activations):
    """Each layer's rel_p99 over the largest rel_p99 among its nearest
    compared ancestors (the tensors its op read, or theirs when those were
    not compared): how much error this layer adds."""
    compared = {l["tensor"]: l["rel_p99"] for l in layers}
    reaching = {}   # name -> the largest error of its nearest compared ancestors, None without one
    for name, _, inputs in activations:
        found = [compared[p] if p in compared else reaching.get(p) for p in inputs]
        found = [v for v in found if v is not None]
        reaching[name] = max(found) if found else None
    for layer in layers:
        parent = reaching.get(layer["tensor"])
        # a tensor fed by the input alone has no error to grow from (first_divergence judges it)
        layer["growth"] = None if parent is None else layer["rel_p99"] / max(parent, GROWTH_FLOOR)
    return layers


def ranked(layers):
    """The layers by growth, largest first (those without a compared ancestor left out)."""
    return sorted((l for l in layers if l["growth"] is not None), key=lambda l: -l["growth"])
