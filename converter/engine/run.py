"""run_engine: the library's entry point, for parity, validate and evaluate alike."""
import dataclasses
import resource

from converter.engine.scheduler import Engine, EngineOptions, backend_spec, default_threads


def run_engine(config, workdir, *, records, items, selected, reference, out_images=None, options=EngineOptions(),
               keep_maps=False, progress=None, worker_class=None):
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
