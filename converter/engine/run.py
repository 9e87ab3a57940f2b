"""run_engine: the library's entry point, for parity, validate and evaluate alike."""
from __future__ import annotations

import dataclasses
import resource
from typing import Callable, TYPE_CHECKING

from converter.engine.scheduler import Engine, EngineOptions, backend_spec, default_threads

if TYPE_CHECKING:
    from converter.backends import Backend
    from converter.config import ModelConfig
    from converter.engine.items import Item
    from converter.layout import WorkdirLike
    from converter.records import StageRecord


def run_engine(config: ModelConfig, workdir: WorkdirLike, *, records: dict[str, StageRecord], items: list[Item],
               selected: list[Backend], reference: str | None, out_images: str | None = None,
               options: EngineOptions = EngineOptions(), keep_maps: bool = False,
               progress: Callable | None = None,
               worker_class: type | None = None) -> tuple[list[dict], dict, tuple[int, int]]:
    """Every backend of `selected` over `items` with one engine; records:
    the verified records of their stages (backends.check_artifacts);
    reference: the name of the backend the others are compared with, or
    None; out_images: where per-image results are kept and reused (None:
    nowhere); options: EngineOptions. Returns (results, counts with the
    hosts' descriptions, the input size (W, H))."""
    from converter.records import converted_input_shape
    from converter.util.cache import machine_secret

    shape = converted_input_shape(workdir, config)
    size = (shape[3], shape[2])
    specs = [backend_spec(b, workdir, config, records) for b in selected]
    options = dataclasses.replace(options, threads=options.threads or default_threads(options.workers))
    secret = machine_secret() if out_images else None
    with Engine(specs, reference=reference, size=size, num_classes=config.num_classes, options=options,
                keep_maps=keep_maps, worker_class=worker_class, secret=secret) as engine:
        results, counts = engine.run(items, out_images, progress)
        hosts = engine.describe()
    counts.update(executor=options.executor, workers=options.workers, threads=options.threads, hosts=hosts,
                  trust_unsealed=options.trust_unsealed,
                  driver_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return results, counts, size
