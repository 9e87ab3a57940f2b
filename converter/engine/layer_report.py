"""Where a converted model starts to disagree with the original: the verdict.

first_divergence is the first tensor, in the original program's order, whose
error exceeds the backend's precision budget (the config's parity.budgets,
applied per tensor); everything before it is within the budget. The growth
ranking orders the tensors by how much error each adds to its inputs'
(layers.add_growth): for INT8 and bf16, where every layer is a little off,
that is the view that finds the broken one. The advice names what to try.
"""
import os

import numpy as np

SCHEMA = "ocrnet-convert/diagnose/1"
TOP = 10


def _sizes(workdir, config, shape):
    """Bytes of each named tensor at this input shape, from the FP32 IR (static once reshaped)."""
    import openvino as ov

    from converter.layout import Workdir
    from converter.runners.openvino import tap_ports

    model = ov.Core().read_model(Workdir.of(workdir).ir("FP32", config.name))
    model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
    sizes = {}
    for name, port in tap_ports(model).items():
        ps = port.get_partial_shape()
        if ps.is_static:
            sizes[name] = 4 * int(np.prod(list(ps.to_shape()) or [1]))
    return sizes


def advice(config, backend, first, layers, fq_names):
    """What to try, in sentences."""
    lines = []
    if first is None:
        lines.append(f"No tensor is over the {backend.budget} budget: {backend.name} computes what the original does, "
                     "layer by layer, within its precision.")
    elif layers and first["tensor"] == layers[0]["tensor"]:
        lines.append(f"The first tensor after the input, {first['tensor']} ({first['op']}), already differs: the "
                     "input's preprocessing is the likely cause (channel order, mean or scale: compare the config's "
                     "converted.input.color and original.preprocessing with what the converted model bakes in).")
    else:
        lines.append(f"The first tensor over the {backend.budget} budget is {first['tensor']}, computed by a "
                     f"{first['op']} op; everything before it is within the budget: look at how that op was "
                     "converted.")
    from converter.engine.layerwise import ranked

    growing = [l for l in ranked(layers) if l["tensor"] in fq_names][:3]
    if backend.budget == "int8" and growing:
        scope = config.quantize["ignored_scope"]
        names = ",".join(l["tensor"] for l in growing)
        lines.append(f"The quantized tensors whose error grows most: {names}. To keep what reads them in float: "
                     f"`ocrnet-convert quantize --ignored-scope {scope},{names} --force`, then parity again.")
    return lines


def _paddle_activations(paddle_dir):
    """(activations, bias-add aliases) of the export's program, legacy or PIR,
    named as the converted models name them."""
    from converter.runners import is_pir_export

    if is_pir_export(paddle_dir):
        from converter.runners import pir_program

        program = pir_program.read_pir(os.path.join(paddle_dir, "model.json"))
        return pir_program.activations(program), pir_program.bias_adds(program)
    from converter.runners.paddle_program import activations, bias_adds, read_program

    desc = read_program(os.path.join(paddle_dir, "model.pdmodel"))
    return activations(desc), bias_adds(desc)


def layer_report(config, workdir, backend, image, *, shape=None, threads=2, first_only=False, window_mb=None):
    """The diagnose.json document for backend (a registry entry) on one image."""
    from converter.backends import REFERENCE, check_artifacts
    from converter.data.images import input_contract, load_rgb, prepare, resize_rgb
    from converter.errors import ConverterError
    from converter.layout import Workdir
    from converter.records import converted_input_shape
    from converter.runners import make_runner, tap_names
    from converter.util.log import info
    from converter.engine.layerwise import WINDOW_BYTES, Comparison, add_growth, over, ranked

    if backend is REFERENCE:
        raise ConverterError("--backend: diagnose compares a converted backend with the original (paddle)")
    check_artifacts(workdir, config, [REFERENCE, backend], named=True)
    built = converted_input_shape(workdir, config)
    shape = tuple(shape or built)
    if shape != tuple(built) and backend.runtime == "onnxruntime":
        raise ConverterError(f"--input-shape: the ONNX model is static at {list(built)}; only the IRs reshape")
    rgb = resize_rgb(load_rgb(image), shape[3], shape[2])
    x_original = prepare(rgb, input_contract(config, "original"))
    x_converted = prepare(rgb, input_contract(config, "converted"))
    paddle_dir, model = Workdir.of(workdir).paddle, backend.model_path(workdir, config)
    acts, aliases = _paddle_activations(paddle_dir)
    available = tap_names(backend.runtime, model) & {name for name, _, _ in acts}
    extra = {"precision": backend.precision, **({"shape": shape} if backend.runtime == "openvino" else {})}

    def original(taps):
        return make_runner("paddle", paddle_dir, threads=threads, taps=taps)

    def converted(taps):
        return make_runner(backend.runtime, model, threads=threads, taps=taps, **extra)
    budget = config.budgets[backend.budget]
    sizes = _sizes(workdir, config, shape)
    comparison = Comparison(acts, original=original, converted=converted, x_original=x_original,
                            x_converted=x_converted, available=available, sizes=sizes, aliases=aliases)
    comparison.log = info   # one line per window: full size takes minutes
    window = (window_mb << 20) if window_mb else WINDOW_BYTES
    layers, unmatched = comparison.run(budget, first_only, window)
    add_growth(layers, acts)
    first = next((l for l in layers if over(l, budget)), None)
    fq = _fake_quantized(model) if backend.runtime == "openvino" else set()
    from converter.util.memory import peak_rss_mb

    return {"schema": SCHEMA, "backend": backend.name, "image": os.path.abspath(image), "input_shape": list(shape),
            "budget": dict(budget, name=backend.budget),
            "first_divergence": None if first is None else {k: first[k] for k in
                                                             ("tensor", "op", "index", "rel_max", "rel_p99", "cosine")},
            "growth": [{k: l[k] for k in ("tensor", "op", "index", "growth", "rel_p99")} for l in ranked(layers)[:TOP]],
            "advice": advice(config, backend, first, layers, fq),
            "layers": layers, "unmatched": unmatched, "first_only": first_only,
            "windows": {"count": len(comparison.windows), "budget_mb": window >> 20,
                        "largest_mb": round(max((sum(sizes.get(comparison.source[n], 0) for n in w)
                                                 for w in comparison.windows), default=0) / 2 ** 20, 1)},
            "seconds": comparison.seconds, "peak_rss_mb": peak_rss_mb()}


def _fake_quantized(model_path):
    import openvino as ov

    from converter.runners.openvino import activation_fake_quantizes

    return set(activation_fake_quantizes(ov.Core().read_model(model_path)))
