"""parity stage: original vs every converted backend, per pixel, with a gate
per precision (the gates: converter.engine.gates).

A front end of the validate engine (converter.engine): a worker process
(one by default: see validate) runs the original on a chunk of images, then
every backend in turn, each compared with the original's class maps and
logits as it runs. Nothing is cached: parity keeps the class maps of its few
images for the report's pictures. With --cityscapes the images come with
ground truth, and each backend's mIoU is compared with the original's (the
task budget).
"""
import os
import time

from converter.backends import REFERENCE, check_artifacts, select
from converter.errors import ParityFailure
from converter.layout import Workdir
from converter.util.log import info
from converter.engine.gates import gate, task_result


def diagnose_commands(config, workdir, failures, compared, items):
    """{failing backend: the diagnose command for its first failing image}."""
    import shlex

    from converter.config import DEFAULT_CONFIG
    from converter.engine.gates import backend_failed

    out = {}
    for b in compared:
        if not backend_failed(b.name, failures):
            continue
        image = next((item for item in items for f in failures if f.startswith(f"{b.name} on {item.id}:")), items[0])
        args = ["ocrnet-convert", "diagnose", "--workdir", str(workdir), "--backend", b.name, "--images", image.path,
                "--output", Workdir.of(workdir).diagnose(b.name)]
        if os.path.abspath(config.path) != os.path.abspath(DEFAULT_CONFIG):
            args[2:2] = ["--config", config.path]
        out[b.name] = {"image": image.id, "command": " ".join(shlex.quote(a) for a in args)}
    return out


def _int8_gate(config, workdir, *, compared, records, height, width, threads):
    """The INT8 IR's quantized tensors against the error profile recorded
    when it was built (engine.int8_profile)."""
    from converter.engine import int8_profile

    int8 = [b for b in compared if b.stage == "quantize" and b.gated]
    if not int8:
        return []
    info("parity: the INT8 IR's quantized tensors against their recorded error profile...")
    fp32_xml, int8_xml = int8_profile.int8_paths(workdir, config)
    return int8_profile.failures(int8[0].name, records["quantize"].params.get("error_profile"), config,
                                 fp32_xml=fp32_xml, int8_xml=int8_xml, full_hw=(height, width), threads=threads)


def run(config, workdir, *, images=None, threads=None, backends=None, cityscapes=None, split="val", limit=None,
        workers=1):
    """The parity stage; raises ParityFailure (exit 10) when a gate fails,
    after writing the report."""
    from converter.stages import StageResult

    paths, record = run_parity(config, workdir, images=images, threads=threads, backends=backends,
                               cityscapes=cityscapes, split=split, limit=limit, workers=workers)
    return StageResult("parity", paths, record)


def _entries(config, compared, results, cityscapes):
    """{backend: its gated flag, budget, precision and each image's comparison (and the mIoU task with labels)}."""
    from converter.engine.aggregate import sum_matrices

    entries = {b.name: {"gated": b.gated, "budget": b.budget,
                        "precision": results[0]["backends"][b.name].get("precision") or "f32",
                        "images": {r["id"]: r["backends"][b.name]["compare"] for r in results}}
               for b in compared}
    if cityscapes:
        num = config.num_classes
        ref_conf = sum_matrices([r["reference"]["conf_gt"] for r in results], num)
        for b in compared:
            entries[b.name]["task"] = task_result(
                ref_conf, sum_matrices([r["backends"][b.name]["conf_gt"] for r in results], num), config.class_names)
    return entries


def _runs(config, selected, results, run):
    """{backend: its load, inference and comparison seconds, peak RSS, workers and runner info}."""
    runs = {}
    # every worker runs every backend in turn: the peak is the workers' largest
    peak = max((h["peak_rss_mb"] or 0 for h in run["hosts"]), default=None)
    for b in selected:
        entries_b = [r["reference"] if b is REFERENCE else r["backends"][b.name] for r in results]
        seconds = [e["seconds"] for e in entries_b]
        info_b = next((h["info"][b.name] for h in run["hosts"] if b.name in h["info"]), {})
        runs[b.name] = {"load_seconds": run["loads"].get(b.name), "infer_seconds": seconds,
                        "compare_seconds": [e.get("compare_seconds", 0.0) for e in entries_b],
                        "wall_seconds": round(sum(seconds), 1), "peak_rss_mb": peak,
                        "workers": [h["pid"] for h in run["hosts"]], "info": info_b,
                        "gated": b.gated, "role": b.role, "input": b.side, "model": b.model(config)}
    return runs


def run_parity(config, workdir, *, images=None, threads=None, backends=None, cityscapes=None, split="val",
               limit=None, workers=1):
    """Returns (paths, record); raises ParityFailure when the gate fails.
    backends: names from the registry (default: all that are built); the
    reference always runs. The images go through the validate engine
    (converter.engine), keeping each image's class maps for the report."""
    from converter.stages.parity_report import write_report
    from converter.util.progress import progress_printer
    from converter.engine.scheduler import EngineOptions
    from converter.engine.items import collect_items
    from converter.engine.run import run_engine

    selected, not_built, records = check_artifacts(workdir, config, select(backends, with_reference=True),
                                                   named=bool(backends))
    items = collect_items(images, cityscapes, split, limit)
    start = time.perf_counter()
    info(f"parity: {', '.join(b.name for b in selected)} on {len(items)} image(s)...")
    results, run, (width, height) = run_engine(
        config, workdir, records=records, items=items, selected=selected, reference=REFERENCE.name,
        options=EngineOptions(workers=workers, threads=threads), keep_maps=True, progress=progress_printer("parity"))
    compared = [b for b in selected if b is not REFERENCE]
    entries = _entries(config, compared, results, cityscapes)
    failures = gate(entries, config) + _int8_gate(config, workdir, compared=compared, records=records, height=height,
                                                  width=width, threads=run["threads"])
    maps = [(r["id"], dict(r["maps"], reference=r["maps"]["classes"])) for r in results]
    for _, m in maps:
        del m["classes"]
    record = {"stage": "parity", "reference": REFERENCE.name, "input_size": [width, height], "threads": run["threads"],
              "workers": workers, "chunk": run["chunk"], "images": [os.path.abspath(item.path) for item in items],
              "runs": _runs(config, selected, results, run), "results": entries, "not_built": not_built,
              "labels": {"cityscapes": os.path.abspath(cityscapes), "split": split} if cityscapes else None,
              "thresholds": {"min_agreement": config.min_agreement, "tie_margin": config.tie_margin,
                             "budgets": config.budgets, "max_miou_drop": config.max_miou_drop},
              "passed": not failures, "failures": failures,
              "seconds": round(time.perf_counter() - start, 1)}
    record["diagnose"] = diagnose_commands(config, workdir, failures, compared, items)
    out_paths = write_report(config, workdir, record, maps)
    if failures:
        raise ParityFailure(f"{len(failures)} gate failure(s); first: {failures[0]}; "
                            f"report: {Workdir.of(workdir).parity_markdown}")
    return out_paths, record
