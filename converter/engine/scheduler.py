"""The engine: feed workers chunks of images, keep each image's small results.

Plan. `workers` workers (processes or Ray actors); each takes a chunk of
images at a time and runs the backends over it one after the other: the
reference first (whose class maps and logits stay in the worker), then every
other backend, each compared with the reference as it runs. A worker holds
one runtime at a time (see engine.worker), so its memory is its largest
backend's plus the chunk's reference outputs, whatever the number of
backends or images. The chunk is as many images as CHUNK_BYTES of
reference outputs allow (3 at 1024x2048 with 19 classes); more images per
chunk would load each backend fewer times, at the price of memory.

Results. When every backend has compared an image, its results are written
to OUT/images/<key>.json (the disagreement masks beside it as 1-bit PNGs,
the JSON last), sealed with this machine's secret (engine.results).

Resume. An image whose key has a usable stored result is not computed again;
a killed run leaves only whole result files (atomic writes), so a rerun
computes exactly the images without one. A stored result that fails its
seal or schema is recomputed and counted.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from converter.layout import Workdir
from converter.util.fsutil import write_bytes_atomic, write_json_atomic
from converter.engine import results as schema
from converter.engine.items import models_fingerprint, result_key

CHUNK_BYTES = 640 << 20
MAX_CHUNK = 32


def chunk_size(num_classes: int, size: tuple[int, int], budget: int = CHUNK_BYTES) -> int:
    """Images per chunk: a worker keeps, per image, the reference's f32 logits
    and class map, the input and the labels."""
    w, h = size
    per_image = w * h * (4 * num_classes + 1 + 3 + 1)
    return max(1, min(MAX_CHUNK, budget // per_image))


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs: where its workers are, how many, with how many
    threads, and which stored results it trusts."""
    executor: str = "local"          # "local" (processes) or "ray"
    address: Optional[str] = None    # a Ray cluster's, for executor "ray"
    workers: int = 1
    threads: Optional[int] = None    # per worker; None: the cores shared out (default_threads)
    chunk: Optional[int] = None      # images per chunk; None: chunk_size()
    trust_unsealed: bool = False     # reuse stored results this machine did not seal, after their schema check


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 2) // max(1, workers))


def backend_spec(backend: Any, workdir: Any, config: Any, records: dict) -> dict:
    """A registry backend as a worker loads it: the model and the sha256 of
    each of its files (from the stage record just verified)."""
    from converter.data.images import input_contract
    from converter.records import record_files

    model = backend.model_path(workdir, config)
    folder = model if os.path.isdir(model) else os.path.dirname(model)
    stage_folder = Workdir.of(workdir).stage_folder(backend.stage)
    files = {os.path.abspath(p): m["sha256"] for p, m in record_files(stage_folder, backend.stage,
                                                                      records[backend.stage])
             if os.path.dirname(os.path.abspath(p)) == os.path.abspath(folder)}
    return {"name": backend.name, "runtime": backend.runtime, "model": os.path.abspath(model), "files": files,
            "precision": backend.precision, "contract": input_contract(config, backend.side),
            "output": backend.output_name(config)}


class _Chunk:
    def __init__(self, index, members):
        self.index, self.members, self.tries, self.attempt = index, members, 0, None


class Engine:
    def __init__(self, specs, *, reference, size, num_classes, options, keep_maps=False, worker_class=None,
                 secret=None):
        """specs: backend_spec() of every backend to run; reference: the
        name of one of them, or None (no comparison: ground truth only).
        options: EngineOptions, its threads already settled; secret: seals
        the results written and checks the ones reused
        (util.cache.machine_secret); worker_class: the Worker a worker builds
        (default engine.worker.Worker)."""
        self.reference, self.num_classes, self.size = reference, num_classes, tuple(size)
        self.specs = {s["name"]: s for s in specs}
        self.compared = [n for n in self.specs if n != reference]
        self.fingerprint = models_fingerprint(specs, size)
        self.chunk = options.chunk or chunk_size(num_classes, self.size)
        self.workers, self.threads, self.keep_maps = max(1, options.workers), options.threads, keep_maps
        self.executor_name, self.address, self.worker_class = options.executor, options.address, worker_class
        self.secret, self.trust_unsealed = secret, options.trust_unsealed
        self.executor, self.started = None, 0   # the workers started

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.executor is not None:
            self.executor.close(kill=exc_type is not None)

    def _start(self, workers):
        from converter.engine.executors import LocalExecutor, RayExecutor

        spec = {"backends": self.specs, "threads": self.threads, "size": list(self.size),
                "num_classes": self.num_classes, "keep_maps": self.keep_maps}
        self.started = workers
        if self.executor_name == "ray":
            self.executor = RayExecutor([spec] * workers, self.address, self.worker_class)
        else:
            self.executor = LocalExecutor([spec] * workers, self.worker_class)
        return self.executor

    def describe(self) -> list[dict]:
        """Each worker's node, pid, threads, load seconds, peak RSS so far and runner info."""
        if self.executor is None:
            return []
        handles = {self.executor.submit(i, "describe"): i for i in range(self.started)}
        out: list[Any] = [None] * len(handles)
        while any(v is None for v in out):
            for handle, value in self.executor.wait():  # each worker's description, in order
                out[handles[handle]] = value
        return out

    def _expect(self, item):
        return {"sha256": item.sha256, "label_sha256": item.label_sha256, "size": list(self.size),
                "reference": self.reference, "backends": self.compared, "num_classes": self.num_classes}

    def _stored(self, items, keys, images_dir):
        """{index: usable stored result}, and how many stored ones were refused."""
        found, refused = {}, 0
        for i, (item, key) in enumerate(zip(items, keys)):
            stored = schema.load(images_dir, key) if images_dir else None
            if stored is None:
                continue
            result, _ = schema.usable(stored, key, self._expect(item), self.secret, self.trust_unsealed)
            if result is None:
                refused += 1
                continue
            found[i] = dict(result, id=item.id, path=os.path.abspath(item.path))
        return found, refused

    def run(self, items: list, images_dir: str | None = None, progress: Any = None) -> tuple[list[dict], dict]:
        """Results (stored or computed) for items, in order, and counts.
        images_dir None: nothing is stored or reused (parity's own runs)."""
        keys = [result_key(item, self.fingerprint) for item in items]
        found, refused = self._stored(items, keys, images_dir)
        results = [found.get(i) for i in range(len(items))]
        todo = [i for i in range(len(items)) if results[i] is None]
        chunks = [_Chunk(k, todo[k * self.chunk:(k + 1) * self.chunk]) for k in range(-(-len(todo) // self.chunk))]
        report = progress or (lambda **kw: None)
        total, reused = len(items), len(items) - len(todo)
        report(done=reused, total=total, reused=reused, eta=None)
        start = time.perf_counter()
        run = _Run(self, items, keys=keys, results=results, images_dir=images_dir, report=report, total=total,
                   reused=reused)
        if chunks:
            if images_dir:
                os.makedirs(images_dir, exist_ok=True)
            run.go(self._start(min(self.workers, len(chunks))), chunks)
        return results, {"images": total, "reused": reused, "computed": len(todo), "refused_stored": refused,
                         "chunk": self.chunk, "loads": run.loads, "seconds": round(time.perf_counter() - start, 1)}


class _Run:
    """One run's bookkeeping: which call belongs to which chunk and image."""

    def __init__(self, engine, items, *, keys, results, images_dir, report, total, reused):
        self.e, self.items, self.keys, self.results = engine, items, keys, results
        self.images_dir, self.report, self.total, self.reused = images_dir, report, total, reused
        self.calls, self.parts, self.loads = {}, {}, {}
        steps_per_image = (1 if engine.reference else 0) + len(engine.compared)
        self.units_total, self.units_done, self.finished = (total - reused) * steps_per_image, 0, 0
        self.start = time.perf_counter()

    def go(self, ex, chunks):
        from converter.errors import WorkerLost
        from converter.engine.executors import RETRIES

        waiting, busy = list(chunks), {}
        while waiting or busy:
            for h in range(self.e.started):
                if h not in busy and waiting:
                    busy[h] = waiting.pop(0)
                    self._submit(ex, h, busy[h])
            try:
                done = ex.wait()
            except WorkerLost as exc:
                chunk = busy.get(getattr(exc, "worker", None))
                if chunk is None or not exc.restarted or chunk.tries >= RETRIES:
                    raise
                chunk.tries += 1   # the worker came back fresh: its chunk starts over there
                ex.forget([c for c, v in self.calls.items() if v[0] is chunk.attempt])
                self._submit(ex, exc.worker, chunk)
                continue
            for handle, value in done:
                if handle not in self.calls:
                    continue
                attempt, kind, i, name = self.calls.pop(handle)
                current = busy.get(attempt.worker)
                if current is None or current.attempt is not attempt:
                    continue   # a call of an attempt given up
                if self._record(attempt, kind, i, name, value):
                    del busy[attempt.worker]

    def _submit(self, ex, h, chunk):
        attempt = _Attempt(h, chunk)
        chunk.attempt = attempt
        for i in chunk.members:
            self.parts[i] = {"reference": None, "backends": {}}
        plan = [("begin", slot, i, None) for slot, i in enumerate(chunk.members)]
        if self.e.reference:
            plan += [("load", None, None, self.e.reference)]
            plan += [("reference", slot, i, self.e.reference) for slot, i in enumerate(chunk.members)]
        for name in self.e.compared:
            plan += [("load", None, None, name)] + [("compare", slot, i, name) for slot, i in enumerate(chunk.members)]
        plan += [("end", slot, i, None) for slot, i in enumerate(chunk.members)]
        attempt.left = len(plan)
        for kind, slot, i, name in plan:
            if kind == "begin":
                args = (slot, self.items[i].payload())
            elif kind == "load":
                args = (name,)
            else:
                args = (slot,)
            self.calls[ex.submit(h, kind, *args)] = (attempt, kind, i, name)

    def _record(self, attempt, kind, i, name, value):
        """Take one call's reply; True when the attempt's last call is in."""
        attempt.left -= 1
        if kind == "load":
            self.loads[name] = round(self.loads.get(name, 0.0) + value["load_seconds"], 2)
        elif kind == "reference":
            self.parts[i]["reference"] = value
            self._step()
        elif kind == "compare":
            self.parts[i]["backends"][name] = value
            self._step()
            if len(self.parts[i]["backends"]) == len(self.e.compared):
                self.results[i] = self._finish(i, self.parts.pop(i))
                self.finished += 1
                self._step(report=True)
        return attempt.left == 0

    def _step(self, report=False):
        if not report:
            self.units_done += 1
            return
        rate = (time.perf_counter() - self.start) / max(1, self.units_done)
        self.report(done=self.reused + self.finished, total=self.total, reused=self.reused,
                    eta=rate * (self.units_total - self.units_done))

    def _finish(self, i, parts):
        item, key, e = self.items[i], self.keys[i], self.e
        result = {"schema": schema.RESULT_SCHEMA, "key": key, "sha256": item.sha256,
                  "label_sha256": item.label_sha256, "size": list(e.size), "reference": None, "backends": {}}
        maps = {}
        if e.reference is not None:
            ref = dict(parts["reference"])
            maps.update({k: ref.pop(k) for k in ("input", "classes") if k in ref})
            result["reference"] = {"name": e.reference, **ref}
        for name, entry in sorted(parts["backends"].items()):
            entry = dict(entry)
            if "classes" in entry:
                maps[name] = entry.pop("classes")
            png = entry.pop("diff_png", None)
            if png is not None and self.images_dir:
                import hashlib

                entry["diff_png"] = schema.diff_png_name(key, name)
                entry["diff_png_sha256"] = hashlib.sha256(png).hexdigest()
                write_bytes_atomic(os.path.join(self.images_dir, entry["diff_png"]), png)
            result["backends"][name] = entry
        if self.images_dir:
            result = schema.seal(result, e.secret)
            write_json_atomic(os.path.join(self.images_dir, key + ".json"), result)   # last: the image is done
        result = dict(result, id=item.id, path=os.path.abspath(item.path))
        return dict(result, maps=maps) if maps else result


class _Attempt:
    """One try of a chunk on a worker: a Ray actor restarted mid-chunk gets a new one."""

    def __init__(self, worker, chunk):
        self.worker, self.chunk, self.left = worker, chunk, 0
