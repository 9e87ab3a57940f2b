"""run_engine: the library's entry point, for parity, validate and evaluate alike."""
import resource

from converter.validate.engine import Engine, backend_spec, default_threads


def run_engine(config, workdir, records, items, selected, reference, out_images, executor="local", address=None,
               workers=1, threads=None, keep_maps=False, progress=None, host_class=None, trust_unsealed=False,
               chunk=None):
    """Every backend of `selected` over `items` with one engine; records:
    the verified records of their stages (backends.check_artifacts);
    out_images: where per-image results are kept and reused (None: nowhere).
    Returns (results, counts with the hosts' descriptions, the input size
    (W, H))."""
    from converter.records import converted_input_shape
    from converter.util.cache import machine_secret

    shape = converted_input_shape(workdir, config)
    size = (shape[3], shape[2])
    specs = [backend_spec(b, workdir, config, records) for b in selected]
    threads = threads or default_threads(workers)
    secret = machine_secret() if out_images else None
    with Engine(specs, reference, size, config.num_classes, workers, threads, executor, address, keep_maps,
                host_class, secret, trust_unsealed, chunk) as engine:
        results, counts = engine.run(items, out_images, progress)
        hosts = engine.describe()
    counts.update(executor=executor, workers=workers, threads=threads, hosts=hosts,
                  trust_unsealed=trust_unsealed,
                  driver_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return results, counts, size
