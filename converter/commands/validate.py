"""validate: the original vs the chosen backends over a whole image set.

    ocrnet-convert validate (--cityscapes ROOT [--split val] | --images FILE_OR_DIR ...)
        --workdir W --output OUT [--backends NAME ...] [--limit N]
        [--executor local|ray] [--ray-address HOST:PORT] [--workers N] [--threads N]

OUT/images/<key>.json   each image's small results (resumable: see engine.scheduler)
OUT/images/<key>.<backend>.png   where that backend's map differs from the original's
OUT/worst/<backend>-<rank>.png   the 5 images with the lowest agreement, drawn
OUT/validate.json, validate.md   the metrics per backend and the gates; exit 10 when one fails
"""
import os

from converter.errors import ConverterError, ParityFailure

SCHEMA = "ocrnet-convert/validate/1"


def run_validate(config, workdir, output, *, images=None, cityscapes=None, split="val", backends=None, limit=None,
                 options=None, worker_class=None):
    """validate.json/.md for the images; raises ParityFailure when a gate
    fails. options: engine.scheduler.EngineOptions; worker_class: the engine's
    Worker (tests pass faulty ones)."""
    from converter.backends import REFERENCE, check_artifacts, select
    from converter.records import export_weights
    from converter.util.fsutil import write_bytes_atomic, write_json_atomic
    from converter.util.progress import progress_printer
    from converter.engine.aggregate import aggregate, draw_worst, markdown, timing
    from converter.engine.items import collect_items
    from converter.engine.scheduler import EngineOptions
    from converter.engine.run import run_engine

    options = options or EngineOptions()
    if options.address and options.executor != "ray":
        raise ConverterError("--ray-address goes with --executor ray")
    if options.address:
        from converter.engine.ray_address import parse

        parse(options.address)   # a malformed address is refused even when every result is reused
    selected, left_out, records = check_artifacts(workdir, config, select(backends, with_reference=True),
                                                  named=bool(backends))
    items = collect_items(images, cityscapes, split, limit)
    results, run, size = run_engine(config, workdir, records=records, items=items, selected=selected,
                                    reference=REFERENCE.name, out_images=os.path.join(output, "images"),
                                    options=options, progress=progress_printer("validate"), worker_class=worker_class)
    compared = [b for b in selected if b is not REFERENCE]
    summary = aggregate(results, config, compared, REFERENCE.name)
    draw_worst(summary, results, output, size)
    doc = {"schema": SCHEMA, "model": config.name, "weights": export_weights(workdir), "input_size": list(size),
           "data": {"cityscapes": os.path.abspath(cityscapes), "split": split} if cityscapes else {"images": True},
           "images": [r["id"] for r in results], "left_out": left_out, "metrics": summary,
           "timing": timing(results, compared, REFERENCE.name), "run": run}
    json_path, md_path = os.path.join(output, "validate.json"), os.path.join(output, "validate.md")
    write_json_atomic(json_path, doc)
    write_bytes_atomic(md_path, markdown(doc).encode())
    if not summary["passed"]:
        raise ParityFailure(f"{len(summary['failures'])} gate failure(s); first: {summary['failures'][0]}; "
                            f"report: {md_path}")
    from converter.stages import StageResult

    return StageResult("validate", [json_path, md_path], doc)
