"""Parity report: report.json (schema in docs/parity.md), report.md and one PNG per image."""
import os
import platform

import numpy as np

from converter.backends import REFERENCE
from converter.data.cityscapes import colorize
from converter.util.fsutil import write_bytes_atomic, write_json_atomic, write_png_atomic
from converter.util.incremental import tool_versions
from converter.util.text import md_cell, md_table_head, shown
from converter.layout import Workdir
from converter.records import export_weights
from converter.runners import is_pir_export

PANEL = (512, 256)
LIBRARIES = ("paddlepaddle", "paddle2onnx", "onnx", "onnxruntime", "openvino", "nncf", "numpy", "pillow")


def system_info():
    cpu, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and cpu in ("unknown", "", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {"python": platform.python_version(), **tool_versions(*LIBRARIES)}
    return {"cpu": cpu, "cores": os.cpu_count(),
            "cpu_flags": {f: f in flags for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2")},
            "versions": versions}


def _legend(width, config):
    from PIL import Image, ImageDraw
    rows = (config.num_classes + 4) // 5
    img = Image.new("RGB", (width, 20 * rows + 8), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    col_w = width // 5
    for i, (name, colour) in enumerate(zip(config.class_names, config.palette)):
        x, y = (i % 5) * col_w + 6, (i // 5) * 20 + 4
        draw.rectangle([x, y, x + 14, y + 14], fill=tuple(int(v) for v in colour), outline=(0, 0, 0))
        draw.text((x + 20, y + 2), f"{i} {name}", fill=(0, 0, 0))
    return img


def image_png(name, maps, config):
    """input | reference mask, then per converted backend: its mask | disagreement."""
    from PIL import Image, ImageDraw
    backends = [k for k in maps if k not in ("input", "reference")]
    rows = [("input", maps["input"]), (f"reference: {REFERENCE.title}", colorize(maps["reference"], config.palette))]
    for backend in backends:
        got = maps[backend]
        gray = maps["input"].mean(axis=2, keepdims=True).astype(np.uint8).repeat(3, axis=2) // 2
        gray[got != maps["reference"]] = (255, 0, 0)
        rows += [(backend, colorize(got, config.palette)), (f"{backend}: disagreement (red)", gray)]
    w, h = PANEL
    legend = _legend(2 * w, config)
    canvas = Image.new("RGB", (2 * w, (h + 18) * ((len(rows) + 1) // 2) + legend.height + 22), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), name, fill=(0, 0, 0))
    for i, (title, img) in enumerate(rows):
        x, y = (i % 2) * w, 22 + (i // 2) * (h + 18)
        draw.text((x + 6, y + 2), title, fill=(0, 0, 0))
        small = Image.fromarray(img).resize(PANEL, Image.BILINEAR if title == "input" else Image.NEAREST)
        canvas.paste(small, (x, y + 16))
    canvas.paste(legend, (0, canvas.height - legend.height))
    return canvas


def _pct(x):
    return f"{100 * x:.4f} %"


def _gate_text(budget, thresholds):
    if budget == "f32":
        bound = thresholds["budgets"]["f32"]
        return (f"agreement >= {_pct(thresholds['min_agreement'])}, every flip a near-tie "
                f"(top-2 margin < {thresholds['tie_margin']}, or {bound['rel_p99']} of the largest |logit| "
                f"if more), relative logit error p99 <= {bound['rel_p99']}, max <= {bound['rel_max']}")
    bound = thresholds["budgets"][budget]
    return f"{budget} budget: relative logit error p99 <= {bound['rel_p99']}, max <= {bound['rel_max']}"


def _verdict(name, failures):
    from converter.engine.gates import backend_failed

    return "FAIL" if backend_failed(name, failures) else "pass"


def _introduction(record):
    th = record["thresholds"]
    w = record.get("weights") or {}
    return ["# Parity report", "",
            f"Result: **{'PASSED' if record['passed'] else 'FAILED'}**.", "",
            "Each gated backend has a gate by precision: f32 backends must agree with the original up to "
            "near-ties; reduced precisions (bf16, FP16, INT8) must keep their logit error, relative to the "
            "image's largest original logit, within a budget (agreement is reported, not gated: near-ties "
            "flip under any rounding)" + (f"; with ground truth, mIoU may drop at most {th['max_miou_drop']} "
                                         "below the original's." if record.get("labels") else "."), "",
            f"Weights: **{w.get('kind', 'unknown')}**" + (f" (seed {w.get('seed')}; outputs are not meaningful)"
                                                          if w.get("kind") == "synthetic" else
                                                          f" (sha384 {w.get('sha384')})"),
            f"Input size: {record['input_size'][0]}x{record['input_size'][1]}, bilinear resize; "
            f"{record['threads']} threads per backend.", ""]


def _gates(record):
    lines = md_table_head("backend", "computes in", "gate", "verdict")
    for backend, entry in record["results"].items():
        gate = _gate_text(entry.get("budget") or "f32", record["thresholds"]) if entry["gated"] else "reported only"
        lines.append(f"| {backend} | {entry.get('precision', '')} | {gate} | "
                     f"{_verdict(backend, record['failures']) if entry['gated'] else '-'} |")
    for name, why in (record.get("not_built") or {}).items():
        lines.append(f"| {name} | - | not run: {md_cell(why)} | - |")
    return lines


def _images(record):
    lines = ["", *md_table_head("backend", "image", "agreement", "disagreeing px", "max flip margin",
                                "mean IoU vs original", "logit abs max", "logit rel p99", "logit rel max")]
    for backend, entry in record["results"].items():
        for image, m in entry["images"].items():
            err = m.get("logit_error", {})
            lines.append(f"| {backend} | {md_cell(image)} | {_pct(m['agreement'])} | "
                         f"{m['disagree']} | {m.get('max_flip_margin', 0):.4g} | {m['mean_iou']:.6f} | "
                         f"{err.get('abs_max', float('nan')):.3g} | {err.get('rel_p99', float('nan')):.3g} | "
                         f"{err.get('rel_max', float('nan')):.3g} |")
    return lines


def _ground_truth(record):
    if not record.get("labels"):
        return []
    lines = ["", f"## Against ground truth ({record['labels']['cityscapes']}, {record['labels']['split']})", "",
             *md_table_head("backend", "mIoU", "original's mIoU", "drop", "classes that dropped most")]
    for backend, entry in record["results"].items():
        task = entry.get("task") or {}
        if task.get("miou") is None:
            continue
        worst = sorted(task["per_class"].items(), key=lambda kv: -kv[1]["drop"])[:3]
        lines.append(f"| {backend} | {task['miou']:.4f} | {task['original_miou']:.4f} | {task['miou_drop']:+.4f} | "
                     + ", ".join(f"{k} {v['drop']:+.4f}" for k, v in worst) + " |")
    return lines


def _top_flips(record, class_names):
    lines = ["", "## Top flips (original -> converted)", ""]
    for backend, entry in record["results"].items():
        for image, m in entry["images"].items():
            if m["top_flips"]:
                flips = ", ".join(f"{class_names[f['from']]}->{class_names[f['to']]} x{f['count']}"
                                  for f in m["top_flips"])
                lines.append(f"- {backend}, {image}: {flips}")
    return lines


def _backends(record):
    lines = ["", "## Backends", "", "Each worker loads one backend at a time; its peak RSS is that of "
             "the largest, plus the reference outputs of its chunk of images.", "",
             *md_table_head("backend", "load s", "infer s (per image)", "compare s (per image)", "wall s",
                            "worker peak RSS MB", "precision")]
    for name, run in record["runs"].items():
        prec = run["info"].get("effective_precision", "f32")
        lines.append(f"| {name} | {run['load_seconds']} | {', '.join(map(str, run['infer_seconds']))} | "
                     f"{', '.join(map(str, run.get('compare_seconds', [])))} | "
                     f"{run['wall_seconds']} | {run['peak_rss_mb']} | {prec} |")
    return lines


def _system_and_failures(record):
    sysinfo = record["system"]
    lines = ["", "## System", "", f"CPU: {sysinfo['cpu']} ({sysinfo['cores']} cores); flags: "
             + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in sysinfo["cpu_flags"].items()),
             "", "Versions: " + ", ".join(f"{k} {v}" for k, v in sysinfo["versions"].items()), ""]
    if sysinfo.get("paddle3_toolchain"):
        lines[-1:-1] = ["", "Paddle 3 toolchain (it ran the original PIR program, the reference): "
                        + ", ".join(f"{k} {v}" for k, v in sysinfo["paddle3_toolchain"].items())]
    if record["failures"]:
        lines += ["## Failures", ""]
        for name, d in (record.get("diagnose") or {}).items():
            lines += [f"{name} failed (first on {md_cell(d['image'])}). Where it starts to disagree, layer by "
                      "layer:", "", "```", shown(d["command"]), "```", ""]
        lines += [f"- {md_cell(f)}" for f in record["failures"]] + [""]
    return lines


def markdown(record, class_names):
    return "\n".join(_introduction(record) + _gates(record) + _images(record) + _ground_truth(record)
                     + _top_flips(record, class_names) + _backends(record) + _system_and_failures(record))


def write_report(config, workdir, record, maps):
    workdir = Workdir.of(workdir)
    out = workdir.parity
    os.makedirs(out, exist_ok=True)
    record["system"] = system_info()
    if is_pir_export(workdir.paddle):
        from converter.runners import paddle3

        # the reference of a PIR program ran in the Paddle 3 toolchain, not in this interpreter's paddle
        record["system"]["paddle3_toolchain"] = paddle3.versions()
    record["weights"] = export_weights(workdir)
    paths = []
    for name, image_maps in maps:
        path = os.path.join(out, os.path.splitext(name)[0] + ".png")
        # zlib's default level: optimize=True made each 1024x1480 picture 8 % smaller in
        # 1.3 s instead of 0.23 s, a second per image of every parity run
        write_png_atomic(path, image_png(name, image_maps, config))
        paths.append(path)
    md = workdir.parity_markdown
    write_bytes_atomic(md, markdown(record, config.class_names).encode())
    js = workdir.parity_report
    write_json_atomic(js, record)
    return [js, md] + paths
