"""parity stage: original vs every converted backend, per pixel, with a gate
per precision (the gates: parity_gates).

A front end of the validate engine (converter.validate): one worker process
holds the backends (faster on 2 cores than two: see validate), each image
goes to the original first and then to every backend, which compares its class map and logits
with the original's. Nothing is cached: parity keeps the class maps of its
few images for the report's pictures. With --cityscapes the images come with
ground truth, and each backend's mIoU is compared with the original's (the
task budget).
"""
import os
import time


from converter.errors import ParityFailure, StageError
from converter.util.log import info
from converter.backends import REFERENCE, select
from converter.records import record_path, verify_build
from converter.stages.parity_gates import gate, task_result


def check_artifacts(workdir, selected, named=True):
    """Every model the selected backends load, verified against its stage's
    record; returns (the backends to run, {left-out backend: why},
    {stage: its verified record} for the backends run).

    When the backends were not named (named=False), an optional one whose
    build is missing or stale (an INT8 IR quantized from an FP32 IR rebuilt
    since) is left out with the reason instead of failing the run: `make
    convert` must not fail on what `make quantize` built before."""
    left_out, records = {}, {}
    if not named:
        for b in [b for b in selected if b.optional]:
            if not os.path.lexists(record_path(workdir, b.stage)):
                left_out[b.name] = f"no {b.stage} record: run `ocrnet-convert {b.stage}`"
                continue
            try:
                records.update(verify_build(workdir, [b.stage]))
            except StageError as exc:
                left_out[b.name] = f"{exc} (not gated)"
    kept = [b for b in selected if b.name not in left_out]
    records.update(verify_build(workdir, sorted({b.stage for b in kept} - set(records))))
    return kept, left_out, records


def run(config, workdir, images=None, threads=None, backends=None, cityscapes=None, split="val", limit=None):
    """The parity stage; raises ParityFailure (exit 10) when a gate fails,
    after writing the report."""
    from converter.stages import StageResult

    paths, record = run_parity(config, workdir, images, threads, backends, cityscapes, split, limit)
    return StageResult("parity", paths, record)


def run_parity(config, workdir, images=None, threads=None, backends=None, cityscapes=None, split="val", limit=None,
               workers=1):
    """Returns (paths, record); raises ParityFailure when the gate fails.
    backends: names from the registry (default: all that are built); the
    reference always runs. The images go through the validate engine
    (converter.validate), keeping each image's class maps for the report."""
    from converter.commands.validate import collect_items, run_engine
    from converter.stages.parity_report import write_report
    from converter.validate.aggregate import sum_matrices

    selected, not_built, records = check_artifacts(workdir, select(backends, with_reference=True),
                                                   named=bool(backends))
    items = collect_items(images, cityscapes, split, limit)
    start = time.perf_counter()
    ref = REFERENCE.name
    info(f"parity: {', '.join(b.name for b in selected)} on {len(items)} image(s)...")
    results, run, (width, height) = run_engine(config, workdir, records, items, selected, ref, None, workers=workers,
                                               threads=threads, keep_maps=True, what="parity")
    compared = [b for b in selected if b is not REFERENCE]
    num = config.num_classes
    entries = {b.name: {"gated": b.gated, "budget": b.budget,
                        "precision": results[0]["backends"][b.name].get("precision") or "f32",
                        "images": {r["id"]: r["backends"][b.name]["compare"] for r in results}}
               for b in compared}
    if cityscapes:
        ref_conf = sum_matrices([r["reference"]["conf_gt"] for r in results], num)
        for b in compared:
            entries[b.name]["task"] = task_result(
                ref_conf, sum_matrices([r["backends"][b.name]["conf_gt"] for r in results], num), config.class_names)
    failures = gate(entries, config)
    hosts = {name: host for host in run["hosts"] for name in host["load_seconds"]}
    runs = {}
    for b in selected:
        seconds = [(r["reference"] if b is REFERENCE else r["backends"][b.name])["seconds"] for r in results]
        host = hosts.get(b.name, {})
        runs[b.name] = {"load_seconds": host.get("load_seconds", {}).get(b.name), "infer_seconds": seconds,
                        "wall_seconds": round(sum(seconds), 1), "peak_rss_mb": host.get("peak_rss_mb"),
                        "worker": host.get("pid"), "info": host.get("info", {}).get(b.name, {}),
                        "gated": b.gated, "role": b.role, "input": b.side, "model": b.model}
    maps = [(r["id"], dict(r["maps"], reference=r["maps"]["classes"])) for r in results]
    for _, m in maps:
        del m["classes"]
    record = {"stage": "parity", "reference": ref, "input_size": [width, height], "threads": run["threads"],
              "workers": workers, "images": [os.path.abspath(item.path) for item in items], "runs": runs,
              "results": entries, "not_built": not_built,
              "labels": {"cityscapes": os.path.abspath(cityscapes), "split": split} if cityscapes else None,
              "thresholds": {"min_agreement": config.min_agreement, "tie_margin": config.tie_margin,
                             "budgets": config.budgets, "max_miou_drop": config.max_miou_drop},
              "passed": not failures, "failures": failures,
              "seconds": round(time.perf_counter() - start, 1)}
    out_paths = write_report(config, workdir, record, maps)
    if failures:
        raise ParityFailure(f"{len(failures)} gate failure(s); first: {failures[0]}; "
                            f"report: {os.path.join(workdir, 'parity', 'report.md')}")
    return out_paths, record
