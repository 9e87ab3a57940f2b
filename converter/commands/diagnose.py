"""diagnose: name the layer where a converted model starts to disagree.

    ocrnet-convert diagnose --workdir W --backend NAME [--images FILE ...] [--output OUT]
                            [--input-shape 1,3,H,W] [--threads N] [--first-only]

OUT/diagnose.json (schema in docs/diagnose.md), OUT/diagnose.md (the verdict, then
the table) and OUT/diagnose.png (each tensor's relative error against its
place in the network, log scale, with the budget and the first divergence).
With several images, OUT/<image stem>/ holds each one's.
"""
import math
import os

from converter.util.text import md_cell, md_table_head, shown

PLOT = (1400, 520)
MARGIN = (70, 20, 30, 60)   # left, top, right, bottom


def markdown(doc):
    first = doc["first_divergence"]
    verdict = ("no tensor over the budget" if first is None else
               f"first divergence at **{md_cell(first['tensor'])}** ({first['op']}, tensor {first['index']}): "
               f"rel. p99 {first['rel_p99']:.3g}, rel. max {first['rel_max']:.3g}, cosine {first['cosine']:.6f}")
    b = doc["budget"]
    lines = [f"# diagnose: {doc['backend']} on {md_cell(os.path.basename(doc['image']))}", "",
             f"Verdict: {verdict}. Budget ({b['name']}): relative error p99 <= {b['rel_p99']}, max <= {b['rel_max']}, "
             "per tensor, relative to the original tensor's largest |value|.", ""]
    lines += [f"- {md_cell(a)}" for a in doc["advice"]] + ["", "## Where the error grows most", "",
                                                              *md_table_head("tensor", "op", "index", "growth",
                                                                             "rel. p99")]
    lines += [f"| {md_cell(g['tensor'])} | {g['op']} | {g['index']} | {g['growth']:.3g} | {g['rel_p99']:.3g} |"
              for g in doc["growth"]]
    lines += ["", f"## Every compared tensor ({len(doc['layers'])}; {len(doc['unmatched'])} unmatched)", "",
              *md_table_head("index", "tensor", "op", "shape", "abs. max", "rel. max", "rel. p99", "cosine",
                             "growth")]
    lines += [f"| {l['index']} | {md_cell(l['tensor'])} | {l['op']} | {'x'.join(map(str, l['shape']))} | "
              f"{l['abs_max']:.3g} | {l['rel_max']:.3g} | {l['rel_p99']:.3g} | {l['cosine']:.6f} | "
              + ("-" if l["growth"] is None else f"{l['growth']:.3g}") + " |"
              for l in doc["layers"]]
    if doc["unmatched"]:
        lines += ["", "## Unmatched", ""] + [f"- {md_cell(u['tensor'])} ({u['op']}): {md_cell(u['why'])}"
                                             for u in doc["unmatched"][:300]]
        if len(doc["unmatched"]) > 300:
            lines.append(f"- ... and {len(doc['unmatched']) - 300} more (diagnose.json lists them all)")
    lines += ["", f"{doc['seconds']} s, peak RSS {doc['peak_rss_mb']} MB, "
                  f"input {'x'.join(map(str, doc['input_shape']))}."]
    return "\n".join(lines) + "\n"


def plot(doc):
    """Relative error (p99 dots, max crosses) per compared tensor, log scale."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", PLOT, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = MARGIN
    w, h = PLOT[0] - left - right, PLOT[1] - top - bottom
    layers, b = doc["layers"], doc["budget"]
    values = [v for l in layers for v in (l["rel_p99"], l["rel_max"]) if v > 0] + [b["rel_p99"], b["rel_max"]]
    lo = math.floor(math.log10(max(min(values), 1e-12)))
    hi = math.ceil(math.log10(max(values))) + (1 if max(values) == 10 ** math.ceil(math.log10(max(values))) else 0)
    hi = max(hi, lo + 1)

    def y(v):
        return top + h - (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo) * h

    def x(i):
        return left + (i + 0.5) * w / max(1, len(layers))
    draw.rectangle([left, top, left + w, top + h], outline=(0, 0, 0))
    for e in range(lo, hi + 1):
        draw.line([left - 4, y(10 ** e), left, y(10 ** e)], fill=(0, 0, 0))
        draw.text((6, y(10 ** e) - 6), f"1e{e}", fill=(0, 0, 0))
    for v, colour, label in ((b["rel_p99"], (0, 120, 0), "budget p99"), (b["rel_max"], (200, 120, 0), "budget max")):
        draw.line([left, y(v), left + w, y(v)], fill=colour)
        draw.text((left + w - 90, y(v) - 13), label, fill=colour)
    first = doc["first_divergence"]
    for i, layer in enumerate(layers):
        if first and layer["tensor"] == first["tensor"]:
            draw.line([x(i), top, x(i), top + h], fill=(220, 0, 0))
            draw.text((min(x(i) + 4, left + w - 260), top + 4), f"first divergence: {shown(layer['tensor'])[:40]}",
                      fill=(220, 0, 0))
        px, pm = x(i), y(layer["rel_max"])
        draw.line([px - 2, pm - 2, px + 2, pm + 2], fill=(150, 150, 150))
        draw.line([px - 2, pm + 2, px + 2, pm - 2], fill=(150, 150, 150))
        py = y(layer["rel_p99"])
        draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=(30, 60, 200))
    draw.text((left, PLOT[1] - bottom + 12), f"{len(layers)} tensors of the original, in the order they are "
              f"computed; dots: relative error p99, crosses: max ({doc['backend']})", fill=(0, 0, 0))
    return img


def write(doc, out):
    from converter.util.fsutil import write_bytes_atomic, write_json_atomic, write_png_atomic

    paths = [os.path.join(out, n) for n in ("diagnose.json", "diagnose.md", "diagnose.png")]
    write_png_atomic(paths[2], plot(doc))
    write_bytes_atomic(paths[1], markdown(doc).encode())
    write_json_atomic(paths[0], doc)   # last: the run is done
    return paths


def unique_stems(paths):
    """A folder name per image: its file name's stem, with -2, -3, ... added
    where stems repeat (a/x.png and b/x.jpg must not share one report)."""
    taken, names = set(), []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        names.append(name)
    return names


def run(config, workdir, *, backend_name, images, output, shape=None, threads=2, first_only=False, window_mb=None):
    from converter.backends import get
    from converter.data.images import expand_image_args, sample_images
    from converter.engine.layer_report import layer_report

    backend = get(backend_name)
    paths = expand_image_args(images) if images else sample_images()[:1]
    folders = [output] if len(paths) == 1 else [os.path.join(output, n) for n in unique_stems(paths)]
    from converter.stages import StageResult

    out = []   # one result per image
    for path, folder in zip(paths, folders):
        doc = layer_report(config, workdir, backend, path, shape=shape, threads=threads, first_only=first_only,
                           window_mb=window_mb)
        out.append(StageResult("diagnose", write(doc, folder), doc))
    return out
