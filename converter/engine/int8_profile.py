"""The INT8 gate with teeth: every quantized tensor's error, recorded at build time, held at parity.

The logits of an INT8 IR are a little off everywhere, so a budget on them
cannot see one FakeQuantize whose range is four times too wide in the middle
of the network (measured: the logits' p99 did not move). Each quantized
tensor's own error can: the quantize stage measures, on the IR it has just
written, the error of every tensor NNCF quantized (the FakeQuantize's
output) against the same tensor of the FP32 IR, on fixed inputs (the central
calibration-sized tile of each bundled sample, both IRs at
INFERENCE_PRECISION_HINT f32, so that the figures do not depend on the CPU's
bf16), and records that profile. Parity measures it again on the IR it is
given and fails every tensor whose error exceeds MARGIN times its recorded
value (plus FLOOR), in its relative error's 99th percentile or its mean: a
mis-scaled or mis-shifted FakeQuantize anywhere, whatever the weights. (The
mean matters: a zero point shifted by a quarter range at the last quantized
tensor moved its p99 1.4x but its mean 11x.)
"""
# Measured at 256x512 (docs/quantization.md: the INT8 gate): a clean IR
# re-measured gives 1.000x on every tensor; one FakeQuantize of five depths
# with its range x4 or its zero point shifted by a quarter range gave
# 4.2x-150x (mean) at the worst tensor, 1.4x-61x (p99).
MARGIN = 1.5
FLOOR = {"p99": 1e-4, "mean": 1e-5}   # relative errors below these are not judged (f32 rounding of tiny tensors)
STATS = {"p99": "rel_p99", "mean": "rel_mean"}


def profile_inputs(config, full_hw, tile_hw):
    """The central tile_hw tile (the tile quantize calibrated on) of each
    bundled sample at the build's full input size, as the converted models take it."""
    from converter.data.images import input_contract, load_rgb, prepare, resize_rgb, sample_images

    (H, W), (h, w) = full_hw, tile_hw
    contract = input_contract(config, "converted")
    out = []
    for path in sample_images():
        x = prepare(resize_rgb(load_rgb(path), W, H), contract)
        top, left = (H - h) // 2 // 32 * 32, (W - w) // 2 // 32 * 32
        out.append(x[:, :, top:top + h, left:left + w].copy())
    return out


def quantized_tensors(model):
    """Names of the tensors NNCF put a FakeQuantize on (activations only: not weights)."""
    from converter.runners.openvino import activation_fake_quantizes

    return list(activation_fake_quantizes(model))


def measure(fp32_xml, int8_xml, inputs, threads=2):
    """{tensor: {p99, mean}}: the relative error's 99th percentile and mean,
    the largest over the inputs, of each quantized tensor of the INT8 IR
    against the FP32 IR's."""
    import openvino as ov

    from converter.runners import make_runner
    from converter.runners.openvino import tap_ports
    from converter.engine.layerwise import aligned, stats

    int8 = ov.Core().read_model(int8_xml)
    fp32_names = set(tap_ports(ov.Core().read_model(fp32_xml)))
    names = [n for n in quantized_tensors(int8) if n in fp32_names]
    shape = list(inputs[0].shape)
    fp32 = make_runner("openvino", fp32_xml, threads=threads, taps=names, shape=shape)
    quant = make_runner("openvino", int8_xml, threads=threads, taps=names, shape=shape)
    worst = {}
    for x in inputs:
        ref, got = fp32.infer(x), quant.infer(x)
        for n in names:
            b = aligned(ref[n], got[n])
            figures = stats(ref[n], b) if b is not None else {v: float("inf") for v in STATS.values()}
            entry = worst.setdefault(n, {k: 0.0 for k in STATS})
            for k, v in STATS.items():
                entry[k] = max(entry[k], figures[v])
        del ref, got
    return worst


def record(config, fp32_xml, int8_xml, full_hw, tile_hw, threads=2):
    """The profile the quantize stage records beside the IR, measured on
    tile_hw tiles; the gate measures the same tile again."""
    inputs = profile_inputs(config, full_hw, tile_hw)
    return {"inputs": f"the central {inputs[0].shape[2]}x{inputs[0].shape[3]} tile of each bundled sample",
            "tile": [int(v) for v in tile_hw], "precision_hint": "f32", "margin": MARGIN, "floor": FLOOR,
            "tensors": {k: {s: round(v, 9) for s, v in e.items()}
                        for k, e in measure(fp32_xml, int8_xml, inputs, threads).items()}}


def failures(name, profile, config, *, fp32_xml, int8_xml, full_hw, threads=2):
    """The gate: one string per quantized tensor whose error grew past its
    recorded value (each starts with the backend's name, as gate() writes)."""
    if not isinstance(profile, dict) or not isinstance(profile.get("tensors"), dict) or not profile["tensors"]:
        return [f"{name}: its quantize record holds no error profile (quantized by an older version): rerun "
                "`ocrnet-convert quantize --force`"]
    tile_hw = _recorded_tile(profile, config, full_hw)
    if tile_hw is None:
        return [f"{name}: its error profile's tile is not a tile of the {full_hw[0]}x{full_hw[1]} input: rerun "
                "`ocrnet-convert quantize --force`"]
    now = measure(fp32_xml, int8_xml, profile_inputs(config, full_hw, tile_hw), threads)

    def recorded_ok(entry):
        return isinstance(entry, dict) and all(isinstance(entry.get(k), (int, float)) and not isinstance(
            entry.get(k), bool) for k in STATS)

    # In the network's order (the INT8 IR's, as measured): a broken
    # FakeQuantize changes only what comes after it, so the first failing
    # tensor is the broken one. (Worst-first named relu_274.tmp_0 first for a
    # broken relu_140.tmp_0 at full size: its error saturated at 2.97.)
    position = {tensor: i for i, tensor in enumerate(now)}
    out = []
    for tensor, entry in sorted(profile["tensors"].items(), key=lambda item: position.get(item[0], len(now))):
        if not recorded_ok(entry):
            out.append(f"{name}: the error profile's entry for {tensor} is not {{p99, mean}} numbers")
            continue
        got = now.get(tensor)
        if got is None:
            out.append(f"{name}: quantized tensor {tensor} of the recorded profile is not in the INT8 IR")
            continue
        for k in STATS:
            if not got[k] <= MARGIN * entry[k] + FLOOR[k]:   # NaN fails too
                out.append(f"{name}: quantized tensor {tensor}: relative error {k} {got[k]:.3g} is more than "
                           f"{MARGIN}x the {entry[k]:.3g} recorded when the IR was built (a FakeQuantize's range or "
                           f"zero point changed); see `ocrnet-convert diagnose --backend {name}`")
                break
    extra = sorted(set(now) - set(profile["tensors"]))
    if extra:
        out.append(f"{name}: {len(extra)} quantized tensor(s) not in the recorded profile, e.g. {extra[0]} "
                   "(a profile of an older version of this tool, or another IR): rerun "
                   "`ocrnet-convert quantize --force`")
    return out


def _recorded_tile(profile, config, full_hw):
    """The tile the profile was measured on: its record's (a profile without
    one was measured on the config's calibration tile); None if it is no
    tile of the input."""
    tile = profile.get("tile", config.quantize["calibration_tile"])
    if not (isinstance(tile, list) and len(tile) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= limit and v % 32 == 0
            for v, limit in zip(tile, full_hw))):
        return None
    return tuple(tile)


def int8_paths(workdir, config):
    from converter.layout import Workdir

    workdir = Workdir.of(workdir)
    return workdir.ir("FP32", config.name), workdir.ir("INT8", config.name)
