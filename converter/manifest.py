"""MANIFEST.json (written last by `make convert`) and the model card.

The manifest lists every artifact with path, size and sha256, the config's
hash, the weights' provenance, tool versions and each stage's parameters.
`model_files` is the subset that must be byte-identical between two builds
from the same inputs (records and reports hold timings, so they are not).
"""
import json
import os

from .fsutil import file_digest, write_bytes_atomic, write_json_atomic
from .report import system_info

MODEL_DIRS = ("paddle", "paddle-logits", "onnx", "openvino")
RECORD_NAMES = ("export.json", "onnx.json", "openvino.json", "report.json", "metrics.json", "bench.json")


def _load(path):
    if os.path.isfile(path):
        with open(path) as fh:
            return json.load(fh)
    return None


def build_manifest(config, workdir, parity):
    """parity: the parity report (report.json), or None when parity was not run."""
    files = []
    for folder, _, names in sorted(os.walk(workdir)):
        for name in sorted(names):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, workdir)
            if name.startswith(".") or rel in ("MANIFEST.json", "README.md"):
                continue
            files.append({"path": rel, "size": os.path.getsize(path), "sha256": file_digest(path),
                          "model_file": rel.split(os.sep)[0] in MODEL_DIRS and name not in RECORD_NAMES})
    export = _load(os.path.join(workdir, "paddle", "export.json")) or {}  # also its stage parameters
    onnx_rec = _load(os.path.join(workdir, "onnx", "onnx.json")) or {}
    ov_rec = _load(os.path.join(workdir, "openvino", "openvino.json")) or {}
    versions = system_info()["versions"]
    return {
        "schema": "ocrnet-convert/manifest/1",
        "model": config.name,
        "config": {"path": os.path.relpath(config.path), "sha256": config.sha256},
        "weights": export.get("weights"),
        "versions": versions,
        "stages": {
            "export": {"without_argmax": export.get("without_argmax"), "input": export.get("input"),
                       "output": export.get("output")} if export else None,
            "onnx": {"opset": onnx_rec.get("opset"), "input_shape": onnx_rec.get("input_shape"),
                     "preprocessing": onnx_rec.get("preprocessing")} if onnx_rec else None,
            "openvino": {"source": ov_rec.get("source"), "input_shape": ov_rec.get("input_shape"),
                         "precisions": ov_rec.get("precisions"),
                         "preprocessing": ov_rec.get("preprocessing")} if ov_rec else None,
            "parity": {"passed": parity["passed"], "thresholds": parity["thresholds"],
                       "input_size": parity["input_size"]} if parity else None,
        },
        "files": files,
    }


def _parity_lines(parity):
    if not parity:
        return ["Parity was not run."]
    lines = [f"Parity: **{'PASSED' if parity['passed'] else 'FAILED'}** at {parity['input_size'][0]}x"
             f"{parity['input_size'][1]} on {len(parity['images'])} image(s): "
             + ", ".join(os.path.basename(p) for p in parity["images"]) + ".", "",
             "| backend | gated | lowest agreement | largest flip margin |", "|---|---|---|---|"]
    for name, entry in parity["results"].items():
        worst = min(m["agreement"] for m in entry["images"].values())
        margin = max(m.get("max_flip_margin", 0.0) for m in entry["images"].values())
        lines.append(f"| {name} | {'yes' if entry['gated'] else 'no'} | {100 * worst:.4f} % | {margin:.3g} |")
    return lines


def model_card(config, manifest, parity):
    weights = manifest["weights"] or {}
    synthetic = weights.get("kind") == "synthetic"
    shape = (manifest["stages"].get("openvino") or {}).get("input_shape") or [1, 3, 1024, 2048]
    lines = [f"# {config.name}", ""]
    if synthetic:
        lines += [f"> **These artifacts carry synthetic weights (seed {weights.get('seed')}), not the published "
                  "checkpoint.** The structure, interfaces and conversion are real; the outputs are not "
                  "meaningful segmentations.", ""]
    lines += [
        "OCRNet with an HRNet_W48 backbone (PaddleSeg release-2.3), semantic segmentation of urban street "
        "scenes into the 19 Cityscapes classes.", "",
        "| | |", "|---|---|",
        "| type | semantic segmentation |",
        f"| GFLOPs | {config.flops_512x1024 / 1e9:.2f} (paddle.flops at 1x3x512x1024: multiply-accumulates of conv and BN) |",
        f"| MParams | {config.params / 1e6:.2f} |",
        "| source framework | PaddlePaddle |",
        f"| reference accuracy | mIoU {100 * config.reference['miou']:.2f} % on {config.reference['dataset']} (published, not measured here) |",
        "", "## Inputs and outputs", "",
        "Original (Paddle inference model, `paddle/`):", "",
        "- input `x`, float32 [N,3,H,W], RGB, normalised as (v - 127.5) / 127.5;",
        "- output `argmax_0.tmp_0`, int32 [N,H,W], class index per pixel.", "",
        "Converted (ONNX `onnx/`, OpenVINO IR `openvino/FP32`, `openvino/FP16`):", "",
        f"- input `x`, float32 [{', '.join(map(str, shape))}], BGR, pixel values 0..255 (channel reversal and "
        "normalisation are inside the model);",
        f"- output `argmax_0.tmp_0`, int32 [{shape[0]}, {shape[2]}, {shape[3]}], class index per pixel.", "",
        "## Parity", ""] + _parity_lines(parity) + [
        "", "## Provenance", "",
        (f"Weights: synthetic, seed {weights.get('seed')} ({weights.get('method')})." if synthetic else
         f"Weights: {weights.get('source')} (sha384 {weights.get('sha384')}, verified: {weights.get('verified')})."),
        f"Config: `{manifest['config']['path']}` (sha256 {manifest['config']['sha256']}).",
        "Tools: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items() if v) + ".",
        "Every file with its sha256 is listed in `MANIFEST.json`.", "",
        "## Licence", "", f"{config.license}. The model and its weights come from PaddleSeg "
        "(https://github.com/PaddlePaddle/PaddleSeg), licensed under the Apache License 2.0.", ""]
    return "\n".join(lines)


def run_manifest(config, workdir):
    parity = _load(os.path.join(workdir, "parity", "report.json"))
    manifest = build_manifest(config, workdir, parity)
    card = os.path.join(workdir, "README.md")
    write_bytes_atomic(card, model_card(config, manifest, parity).encode())
    path = os.path.join(workdir, "MANIFEST.json")
    write_json_atomic(path, manifest)
    return [path, card], manifest
