"""bench --engine: the validate engine against bench, in the same run.

bench times each backend alone in its own process. Here the engine (what
parity, validate and evaluate run) compares the same backends on the sample
images right after, and its figures are held to bench's:

- each backend's inference inside the engine: at most INFER_RATIO times its
  bench median;
- the engine's wall time per image, loads excluded (inference, comparison,
  decoding, the small results' transfer and scheduling all included): at most
  WALL_RATIO times the sum of the backends' bench medians;
- every process (bench's workers, the engine's worker, this driver): at most
  PEAK_RSS_MB of peak RSS.

Where the engine's seconds go is reported per backend: load, inference,
comparison; and per image the rest (decoding, transfer, scheduling).
"""
import resource

import numpy as np

from converter.util.text import md_table_head

INFER_RATIO = 1.15
WALL_RATIO = 1.3
PEAK_RSS_MB = 6 * 1024


def _mean(values):
    return round(float(np.mean(values)), 3) if values else None


def engine_figures(config, workdir, bench, chosen, images=2, threads=2):
    """Run the engine over the first `images` samples with every backend of
    `chosen` (the reference among them) and hold it to `bench` (its record)."""
    from converter.backends import REFERENCE, check_artifacts
    from converter.data.images import sample_images
    from converter.util.log import info
    from converter.engine.items import make_items
    from converter.engine.scheduler import EngineOptions
    from converter.engine.run import run_engine

    selected, _, records = check_artifacts(workdir, config, chosen, named=True)
    items = make_items(sample_images()[:images])
    info(f"bench: the engine on {len(items)} image(s) with {', '.join(b.name for b in selected)}...")
    results, run, _ = run_engine(config, workdir, records=records, items=items, selected=selected,
                                 reference=REFERENCE.name, options=EngineOptions(threads=threads))
    backends, infer_sum = {}, 0.0
    for b in selected:
        entries = [r["reference"] if b is REFERENCE else r["backends"][b.name] for r in results]
        infer = [e["seconds"] for e in entries]
        median = bench["backends"][b.name]["median_seconds"]
        backends[b.name] = {"load_seconds": run["loads"].get(b.name), "infer_seconds": infer,
                            "compare_seconds": [e.get("compare_seconds", 0.0) for e in entries],
                            "bench_median_seconds": median, "infer_ratio": round(float(np.mean(infer)) / median, 3)}
        infer_sum += median
    loads = sum(run["loads"].values())
    work = run["seconds"] - loads
    per_image = work / len(items)
    spent = sum(sum(e["infer_seconds"]) + sum(e["compare_seconds"]) for e in backends.values())
    peaks = {"engine worker": max(h["peak_rss_mb"] or 0 for h in run["hosts"]),
             "engine driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    peaks.update({f"bench {name}": r["peak_rss_mb"] for name, r in bench["backends"].items()})
    guards = {"infer": {"max_ratio": INFER_RATIO, "worst": max(e["infer_ratio"] for e in backends.values())},
              "wall": {"max_ratio": WALL_RATIO, "ratio": round(per_image / infer_sum, 3)},
              "peak_rss": {"max_mb": PEAK_RSS_MB, "worst_mb": max(v or 0 for v in peaks.values())}}
    guards["infer"]["met"] = guards["infer"]["worst"] <= INFER_RATIO
    guards["wall"]["met"] = guards["wall"]["ratio"] <= WALL_RATIO
    guards["peak_rss"]["met"] = guards["peak_rss"]["worst_mb"] <= PEAK_RSS_MB
    return {"images": len(items), "chunk": run["chunk"], "threads": run["threads"], "backends": backends,
            "wall_seconds": run["seconds"], "load_seconds": round(loads, 2),
            "wall_per_image_without_loads": round(per_image, 3), "bench_median_sum": round(infer_sum, 3),
            "other_seconds_per_image": round((work - spent) / len(items), 3), "peak_rss_mb": peaks,
            "guards": guards}


def markdown(engine):
    lines = ["", "## The engine against bench", "",
             f"The validate engine (as parity runs it) on {engine['images']} sample image(s), one worker with "
             f"{engine['threads']} threads, backends in turn; chunks of {engine['chunk']}.", "",
             *md_table_head("backend", "load s", "inference s (per image)", "comparison s (per image)",
                            "bench median s", "inference / bench")]
    for name, e in engine["backends"].items():
        lines.append(f"| {name} | {e['load_seconds']} | {', '.join(map(str, e['infer_seconds']))} | "
                     f"{', '.join(map(str, e['compare_seconds']))} | {e['bench_median_seconds']} | "
                     f"{e['infer_ratio']:.3f} |")
    g = engine["guards"]
    lines += ["", f"Wall per image without loads: {engine['wall_per_image_without_loads']} s against the medians' "
              f"sum {engine['bench_median_sum']} s: {g['wall']['ratio']:.3f}x (at most {g['wall']['max_ratio']}x: "
              f"**{'met' if g['wall']['met'] else 'NOT MET'}**); of it {engine['other_seconds_per_image']} s per "
              "image were neither inference nor comparison (decoding, transfer, scheduling).",
              f"Inference inside the engine: at most {g['infer']['worst']:.3f}x its bench median (at most "
              f"{g['infer']['max_ratio']}x: **{'met' if g['infer']['met'] else 'NOT MET'}**).",
              "Peak RSS per process: " + ", ".join(f"{k} {v} MB" for k, v in engine["peak_rss_mb"].items())
              + f"; largest {g['peak_rss']['worst_mb']} MB (at most {g['peak_rss']['max_mb']} MB: "
              f"**{'met' if g['peak_rss']['met'] else 'NOT MET'}**)."]
    return "\n".join(lines) + "\n"
