"""validate: the original vs the chosen backends over a whole image set.

    ocrnet-convert validate (--cityscapes ROOT [--split val] | --images FILE_OR_DIR ...)
        --workdir W --output OUT [--backends NAME ...] [--limit N]
        [--executor local|ray] [--ray-address HOST:PORT] [--workers N] [--threads N]

OUT/images/<key>.json   each image's small results (resumable: see validate.engine)
OUT/images/<key>.<backend>.png   where that backend's map differs from the original's
OUT/worst/<backend>-<rank>.png   the 5 images with the lowest agreement, drawn
OUT/validate.json, validate.md   the metrics per backend and the gates; exit 10 when one fails
"""
import os
import sys
import time

from converter.errors import ConverterError, ParityFailure

SCHEMA = "ocrnet-convert/validate/1"


def collect_items(images=None, cityscapes=None, split="val", limit=None):
    from converter.commands.evaluate import find_pairs
    from converter.data.images import expand_image_args, sample_images
    from converter.validate.items import make_items

    if cityscapes:
        if not os.path.isdir(cityscapes):
            raise ConverterError(f"--cityscapes {cityscapes}: not a folder")
        pairs = find_pairs(cityscapes, split)[:limit]
        return make_items([p[0] for p in pairs], [p[1] for p in pairs])
    paths = expand_image_args(images) if images else sample_images()
    return make_items(paths[:limit])


def default_threads(workers):
    return max(1, (os.cpu_count() or 2) // max(1, workers))


def progress_printer(what):
    """A tqdm bar with ETA on a terminal; JSON lines otherwise."""
    import json

    state = {"bar": None, "last": 0.0}

    def report(done, total, reused, eta):
        if sys.stderr.isatty():
            from tqdm import tqdm

            if state["bar"] is None:
                state["bar"] = tqdm(total=total, initial=done, unit="img", desc=what, file=sys.stderr)
            else:
                state["bar"].update(done - state["bar"].n)
            if done >= total:
                state["bar"].close()
            return
        now = time.monotonic()
        if done < total and now - state["last"] < 1.0 and done != reused:
            return
        state["last"] = now
        print(json.dumps({"event": "progress", "stage": what, "done": done, "total": total, "reused": reused,
                          "eta_seconds": None if eta is None else round(eta, 1)}), file=sys.stderr, flush=True)
    return report


def run_engine(config, workdir, records, items, selected, reference, out_images, executor="local", address=None,
               workers=1, threads=None, keep_maps=False, what="validate"):
    """Every backend of selected over items with one engine; records: the
    verified records of their stages (parity.check_artifacts). Returns
    (results, counts with the hosts' descriptions, the input size)."""
    from converter.records import converted_input_shape
    from converter.validate.engine import Engine, backend_spec, measured_weights

    shape = converted_input_shape(workdir, config)
    specs = [backend_spec(b, workdir, config, records) for b in selected]
    threads = threads or default_threads(workers)
    with Engine(specs, reference, (shape[3], shape[2]), config.num_classes, workers, threads, executor, address,
                keep_maps, measured_weights(workdir)) as engine:
        results, counts = engine.run(items, out_images, progress_printer(what))
        hosts = engine.describe()
    import resource

    counts.update(executor=executor, workers=workers, threads=threads, lanes=engine.lanes,
                  groups=engine.groups, hosts=hosts,
                  driver_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return results, counts, (shape[3], shape[2])


def run_validate(config, workdir, output, images=None, cityscapes=None, split="val", backends=None, limit=None,
                 executor="local", address=None, workers=1, threads=None):
    from converter.backends import REFERENCE, select
    from converter.records import export_weights
    from converter.stages.parity import check_artifacts
    from converter.util.fsutil import write_bytes_atomic, write_json_atomic
    from converter.validate.aggregate import aggregate, draw_worst, markdown, timing

    if address and executor != "ray":
        raise ConverterError("--ray-address goes with --executor ray")
    selected, left_out, records = check_artifacts(workdir, select(backends, with_reference=True),
                                                  named=bool(backends))
    items = collect_items(images, cityscapes, split, limit)
    results, run, size = run_engine(config, workdir, records, items, selected, REFERENCE.name,
                                    os.path.join(output, "images"), executor, address, workers, threads)
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
    return [json_path, md_path], doc
