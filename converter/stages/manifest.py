"""MANIFEST.json (written last by `make convert`) and the model card.

The manifest lists every artifact with path, size and sha256, the config's
hash, the weights' provenance, tool versions and each stage's parameters.
`model_files` is the subset that must be byte-identical between two builds
from the same inputs (records and reports hold timings, so they are not).
"""
import os
import stat

from converter.errors import StageError
from converter.util.fsutil import file_digest, write_bytes_atomic, write_json_atomic
from converter.util.text import md_cell, md_table_head
from converter.layout import STAGES, Workdir
from converter.records import read_json, record_files, verify_build, weights_summary
from converter.engine.gates import backend_failed
from converter.stages.parity_report import system_info

MODEL_DIRS = tuple(stage.folder for stage in STAGES.values()) + ("paddle-logits",)
RECORD_NAMES = tuple(stage.record for stage in STAGES.values()) + ("report.json", "metrics.json", "bench.json")


def workdir_files(workdir):
    """Relative paths of the regular files of a build, sorted; hidden entries
    (locks, staging folders of a killed run), symlinks, FIFOs and other
    special files are left out, so a planted FIFO cannot hang the walk."""
    found = []
    for folder, dirs, names in os.walk(workdir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(folder, d)))
        for name in names:
            path = os.path.join(folder, name)
            if not name.startswith(".") and stat.S_ISREG(os.lstat(path).st_mode):
                found.append(os.path.relpath(path, workdir))
    return sorted(found)


def build_manifest(config, workdir, parity, records):
    """parity: the parity report (report.json), or None when parity was not run;
    records: {stage: verified record} of the stages that ran."""
    # The files the records list were verified against their sha256 a moment
    # ago (verify_build); only the others are hashed here.
    workdir = Workdir.of(workdir)
    known = {os.path.relpath(path, workdir): meta for stage, record in records.items()
             for path, meta in record_files(workdir.stage_folder(stage), stage, record)}
    files = []
    for rel in workdir_files(workdir):
        if rel in ("MANIFEST.json", "README.md"):
            continue
        path = workdir.file(rel)
        meta = known.get(rel) or {"size": os.path.getsize(path), "sha256": file_digest(path)}
        files.append({"path": rel, "size": meta["size"], "sha256": meta["sha256"],
                      "model_file": rel.split(os.sep)[0] in MODEL_DIRS
                      and os.path.basename(rel) not in RECORD_NAMES})
    export, onnx_rec, ov_rec = records["export"], records.get("onnx"), records.get("openvino")
    versions = system_info()["versions"]
    pir = "model.json" in export.files
    if pir:
        from converter.runners import paddle3

        # the PIR program's reference (Paddle 3 Inference) and its ONNX conversion ran there
        versions = dict(versions, paddle3_toolchain=paddle3.versions())
    return {
        "schema": "ocrnet-convert/manifest/1",
        "model": config.name,
        "config": {"path": os.path.relpath(config.path), "sha256": config.sha256},
        "weights": export.weights,
        "versions": versions,
        "stages": {
            "export": {"without_argmax": export.params.get("without_argmax"), "input": export.input,
                       "output": export.output, "format": "pir" if pir else "legacy",
                       "changed": (export.weights or {}).get("changed")},
            "onnx": {"opset": onnx_rec.params.get("opset"), "input_shape": onnx_rec.params.get("input_shape"),
                     "preprocessing": onnx_rec.params.get("preprocessing"), "route": onnx_rec.params.get("route"),
                     "converter": onnx_rec.params.get("converter")} if onnx_rec else None,
            "openvino": {"source": ov_rec.params.get("source"), "input_shape": ov_rec.params.get("input_shape"),
                         "precisions": ov_rec.params.get("precisions"),
                         "preprocessing": ov_rec.params.get("preprocessing")} if ov_rec else None,
            "quantize": {k: records["quantize"].params.get(k) for k in
                         ("options", "calibration", "ignored_adds", "fake_quantize_nodes", "accuracy_control",
                          "nncf", "built_from")} if "quantize" in records else None,
            "model_api": {"output": records["model_api"].output, "check": records["model_api"].params.get("check"),
                          "built_from": records["model_api"].params.get("built_from")}
            if "model_api" in records else None,
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
             + ", ".join(os.path.basename(p) for p in parity["images"]) + ". f32 backends are gated on "
             "agreement up to near-ties; reduced precisions on their logit error relative to the largest "
             "logit (budgets in the config; see parity/report.md).", "",
             *md_table_head("backend", "computes in", "gate", "lowest agreement", "largest flip margin",
                            "worst logit error p99 / max (relative)", "verdict")]
    failures = parity.get("failures") or []
    for name, entry in parity["results"].items():
        worst = min(m["agreement"] for m in entry["images"].values())
        margin = max(m.get("max_flip_margin", 0.0) for m in entry["images"].values())
        errs = [m["logit_error"] for m in entry["images"].values() if "logit_error" in m]
        err = (f"{max(e['rel_p99'] for e in errs):.3g} / {max(e['rel_max'] for e in errs):.3g}" if errs else "-")
        gate = (entry.get("budget") or "f32") if entry["gated"] else "reported"
        failed = backend_failed(name, failures)
        lines.append(f"| {name} | {entry.get('precision', '')} | {gate} | {100 * worst:.4f} % | {margin:.3g} | {err} | "
                     f"{('FAILED' if failed else 'passed') if entry['gated'] else '-'} |")
    for name, why in (parity.get("not_built") or {}).items():
        lines.append(f"| {name} | - | not run: {md_cell(why)} | | | | |")
    return lines


def _bench_lines(bench):
    if not bench:
        return ["Not measured (run `make bench`)."]
    lines = [f"Input {'x'.join(map(str, bench['input_shape']))}, {bench['threads']} threads, median of "
             f"{bench['runs']} runs, measured {bench.get('timestamp', '')}.", "",
             *md_table_head("backend", "median s", "speed-up over the FP32 IR at f32", "peak RSS MB", "computes in")]
    for name, r in bench["backends"].items():
        speed = f"{r['speedup_over_f32_ir']:.2f}x" if r.get("speedup_over_f32_ir") else "-"
        lines.append(f"| {name} | {r['median_seconds']} | {speed} | {r['peak_rss_mb']} | "
                     f"{r['info'].get('effective_precision', 'f32')} |")
    return lines


def _model_api_lines(entry, config):
    if not entry:
        return []
    out, check = entry["output"], entry["check"]
    lines = [f"Model API flavour (`openvino/model_api/<precision>`): the same graph and weights ending in "
             f"Softmax, output `{out['name']}` float32 [{', '.join(map(str, out['shape']))}], the probability of "
             "each class (openvino-model-api 0.1.5-0.4.7 cannot post-process a class-map output). Gated "
             f"against its parent IR on {len(check['images'])} samples at {check['tile'][0]}x{check['tile'][1]}, "
             "f32: argmax agreement " + ", ".join(f"{p} {100 * r['agreement_min']:.4f} %"
                                                  for p, r in check["results"].items())
             + " (differences only at near-ties); largest difference from the Softmax of the parent's scores "
             + ", ".join(f"{p} {r.get('max_probability_error', 0.0):.2g}" for p, r in check["results"].items())
             + ".", ""]
    return lines


def _tool_lines(manifest):
    """The tools, and for a PIR export the Paddle 3 toolchain and the route each artifact took."""
    versions = dict(manifest["versions"])
    toolchain = versions.pop("paddle3_toolchain", None)
    lines = ["Tools: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v and not isinstance(v, dict)) + "."]
    if toolchain:
        lines.append("Paddle 3 toolchain (an isolated interpreter; it ran the original PIR program as the parity "
                     "reference and converted it to ONNX): "
                     + ", ".join(f"{k} {v}" for k, v in toolchain.items()) + ".")
    stages = manifest["stages"]
    if stages.get("onnx") and stages["onnx"].get("route"):
        ov = stages.get("openvino") or {}
        lines.append(f"Route: {stages['export'].get('format', 'legacy')} export; ONNX: {stages['onnx']['route']}; "
                     f"IR read from: {ov.get('source', 'not built')}.")
    return lines


def model_card(config, manifest, parity, bench=None):
    weights = manifest["weights"] or {}
    synthetic = weights.get("kind") == "synthetic"
    shape = (manifest["stages"].get("openvino") or {}).get("input_shape") or list(config.converted_shape)
    src_in, src_out = config.original_input, config.original_output
    dst_in, dst_out = config.converted_input, config.converted_output
    # the first line says which weights these are
    lines = [f"# {config.name}: {md_cell(weights_summary(weights))}", ""]
    if synthetic:
        lines += [f"> **These artifacts carry synthetic weights (seed {weights.get('seed')}), not the published "
                  "checkpoint.** The structure, interfaces and conversion are real; the outputs are not "
                  "meaningful segmentations.", ""]
    description = (config.raw.get("description") or "").strip()
    gflops = (f"{config.flops_512x1024 / 1e9:.2f} (paddle.flops at 1x3x512x1024: multiply-accumulates of conv and BN)"
              if config.flops_512x1024 else "unknown")
    published = config.published_accuracy
    lines += [
        (md_cell(description) + " " if description else "") + f"{config.architecture[0].upper()}"
        f"{config.architecture[1:]}: semantic segmentation into {config.num_classes} classes "
        f"({md_cell(', '.join(config.class_names[:5]))}" + (", ..." if config.num_classes > 5 else "") + ").", "",
        "| | |", "|---|---|",
        "| type | semantic segmentation |",
        f"| architecture | {config.architecture} |",
        f"| GFLOPs | {gflops} |",
        f"| MParams | {config.params / 1e6:.2f} |" if config.params else "| MParams | unknown |",
        "| source framework | PaddlePaddle |",
        (f"| published accuracy | mIoU {100 * published['miou']:.2f} % on {md_cell(published['dataset'])} "
         "(not measured here) |") if published else "| published accuracy | none published |",
        "", "## Inputs and outputs", "",
        "Original (Paddle inference model, `paddle/`):", "",
        f"- input `{src_in.name}`, float32 [N,3,H,W], {src_in.color}, normalised as {config.normalisation_text()};",
        f"- output `{src_out.name}`, int32 [N,H,W], class index per pixel.", "",
        "Converted (ONNX `onnx/`, OpenVINO IR `openvino/FP32`, `openvino/FP16`"
        + (", `openvino/INT8` (NNCF post-training quantization)" if manifest["stages"].get("quantize") else "")
        + "):", "",
        f"- input `{dst_in.name}`, float32 [{', '.join(map(str, shape))}], {dst_in.color}, pixel values 0..255 "
        "(channel order and normalisation are inside the model);",
        f"- output `{dst_out.name}`, int32 [{shape[0]}, {shape[2]}, {shape[3]}], class index per pixel.", ""]
    lines += _model_api_lines(manifest["stages"].get("model_api"), config) + [
        "## Parity", ""] + _parity_lines(parity) + ["", "## Speed", ""] + _bench_lines(bench) + [
        "", "## Provenance", "",
        (f"Weights: synthetic, seed {weights.get('seed')} ({weights.get('method')})." if synthetic else
         f"Weights: {md_cell(weights_summary(weights))}" + (
             f" ({md_cell(weights.get('source'))}, sha384 {weights.get('sha384')}" if weights.get("sha384") else " (")
         + f", verified: {weights.get('verified')})."),
        f"Config: `{manifest['config']['path']}` (sha256 {manifest['config']['sha256']}).",
        *_tool_lines(manifest),
        "Every file with its sha256 is listed in `MANIFEST.json`.", "",
        "## Licence", "", f"{md_cell(config.license)}. " + ("The model and its weights come from PaddleSeg "
                                                              "(https://github.com/PaddlePaddle/PaddleSeg), "
                                                              "licensed under the Apache License 2.0."
                                                              if config.published_accuracy else
                                                              "The model is its owner's; PaddleSeg "
                                                              "(https://github.com/PaddlePaddle/PaddleSeg) is "
                                                              "licensed under the Apache License 2.0."), ""]
    return "\n".join(lines)


def run_manifest(config, workdir):
    workdir = Workdir.of(workdir)
    if not os.path.lexists(workdir.record("export")):
        raise StageError(f"{workdir} holds no build (no {workdir.record('export')}): run make convert first")
    records = verify_build(workdir, [s for s in STAGES if os.path.lexists(workdir.record(s))])
    report = workdir.parity_report
    parity = read_json(report, "parity report") if os.path.lexists(report) else None
    try:
        manifest = build_manifest(config, workdir, parity, records)
        bench_path = workdir.bench_record
        bench = read_json(bench_path, "bench record") if os.path.lexists(bench_path) else None
        card_text = model_card(config, manifest, parity, bench)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        # Only the parity report is read unchecked; our own records are verified.
        raise StageError(f"{report} or the bench record: not of this version (missing or malformed fields)") from None
    card = workdir.model_card
    write_bytes_atomic(card, card_text.encode())
    path = workdir.manifest
    write_json_atomic(path, manifest)
    return [path, card], manifest


def run(config, workdir):
    from converter.stages import StageResult

    paths, manifest = run_manifest(config, workdir)
    return StageResult("manifest", paths, manifest)
