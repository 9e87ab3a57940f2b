"""The engine: plan workers, feed them images, keep each image's small results.

Plan. With W workers and B backends to run (the reference included), one
"lane" is min(W, B) workers holding all B backends between them (assigned
greedily by their measured seconds per image, from bench.json when there is
one, so that the workers of a lane carry similar loads); W // min(W, B)
lanes take images in turn. Each worker loads its backends once and keeps
them: memory per worker does not grow with the number of images.

Flow of one image in a lane: the reference's host runs the reference and
returns its class map and logits (the only full-resolution object); every
host of the lane then compares its backends against them and returns small
results; the image's results are written to OUT/images/<key>.json (the
disagreement masks beside it as 1-bit PNGs, the JSON last), and the
reference's output is dropped. At most WINDOW images are in flight per lane,
so the driver holds at most lanes x WINDOW reference outputs.

Resume. An image whose key (items.result_key) has a result file is not
computed again; a killed run leaves only whole result files (atomic writes),
so a rerun computes exactly the images without one.
"""
import os
import time
from collections import deque

from converter.util.fsutil import write_bytes_atomic, write_json_atomic
from converter.validate.items import RESULT_SCHEMA, load_result, models_fingerprint, result_key, well_formed

WINDOW = 2


def backend_spec(backend, workdir, config, records):
    """A registry backend as a host loads it: the model and the sha256 of
    each of its files (from the stage record just verified)."""
    from converter.data.images import input_contract
    from converter.records import STAGES, record_files

    model = backend.model_path(workdir)
    folder = model if os.path.isdir(model) else os.path.dirname(model)
    stage_folder = os.path.join(workdir, STAGES[backend.stage][0])
    files = {os.path.abspath(p): m["sha256"] for p, m in record_files(stage_folder, backend.stage,
                                                                      records[backend.stage])
             if os.path.dirname(os.path.abspath(p)) == os.path.abspath(folder)}
    return {"name": backend.name, "runtime": backend.runtime, "model": os.path.abspath(model), "files": files,
            "precision": backend.precision, "contract": input_contract(config, backend.side),
            "output": backend.output_name(config)}


def measured_weights(workdir):
    """{backend: median seconds per image} from bench.json, or {}."""
    import json

    try:
        with open(os.path.join(workdir, "bench", "bench.json")) as fh:
            bench = json.load(fh)
        return {n: float(r["median_seconds"]) for n, r in bench["backends"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def plan(names, workers, weights):
    """[[backend names of each host of a lane]] and the number of lanes."""
    per_lane = max(1, min(workers, len(names)))
    lanes = max(1, workers // per_lane)
    groups, loads = [[] for _ in range(per_lane)], [0.0] * per_lane
    for name in sorted(names, key=lambda n: (-weights.get(n, 1.0), names.index(n))):
        k = loads.index(min(loads))
        groups[k].append(name)
        loads[k] += weights.get(name, 1.0)
    return [g for g in groups if g], lanes


class Engine:
    def __init__(self, specs, reference, size, num_classes, workers=1, threads=1, executor="local",
                 address=None, keep_maps=False, weights=None):
        """specs: backend_spec() of every backend to run; reference: the
        name of one of them, or None (no comparison: ground truth only)."""
        self.reference = reference
        self.num_classes = num_classes
        self.size = tuple(size)
        self.fingerprint = models_fingerprint(specs, size)
        by_name = {s["name"]: s for s in specs}
        self.groups, self.lanes = plan(list(by_name), workers, weights or {})
        host_specs = [{"backends": [by_name[n] for n in group], "threads": threads, "size": list(size),
                       "num_classes": num_classes, "keep_maps": keep_maps}
                      for _ in range(self.lanes) for group in self.groups]
        self.executor_name, self.address, self.host_specs = executor, address, host_specs
        self.executor = None

    def __enter__(self):
        return self

    def _start_workers(self):
        """Workers start when there is something to compute: a rerun that
        reuses every result loads no model."""
        from converter.validate.executors import LocalExecutor, RayExecutor

        if self.executor is None:
            if self.executor_name == "ray":
                self.executor = RayExecutor(self.host_specs, self.address)
            else:
                self.executor = LocalExecutor(self.host_specs)
        return self.executor

    def __exit__(self, exc_type, *exc):
        if self.executor is not None:
            self.executor.close(kill=exc_type is not None)

    def describe(self):
        """Each host's node, pid, threads, load seconds, peak RSS so far and runner info."""
        if self.executor is None:
            return []
        handles = {self.executor.submit(i, "describe"): i for i in range(len(self.host_specs))}
        out = [None] * len(handles)
        while any(v is None for v in out):
            for handle, value in self.executor.wait():
                out[handles[handle]] = value
        return out

    def hosts_of(self, lane):
        n = len(self.groups)
        return [(lane * n + k, group) for k, group in enumerate(self.groups)]

    def run(self, items, images_dir=None, progress=None):
        """Results (stored or computed) for items, in order, and counts.
        images_dir None: nothing is stored or reused (parity's own runs)."""
        keys = [result_key(item, self.fingerprint) for item in items]
        results, todo = [None] * len(items), deque()
        names = [n for group in self.groups for n in group if n != self.reference]
        for i, key in enumerate(keys):
            stored = load_result(images_dir, key) if images_dir else None
            if stored is not None and well_formed(stored, names, self.reference, self.num_classes,
                                                  items[i].label_sha256 is not None):
                results[i] = stored
            else:
                todo.append(i)
        reused, total = len(items) - len(todo), len(items)
        if images_dir:
            os.makedirs(images_dir, exist_ok=True)
        ex, start, computed = self._start_workers() if todo else None, time.perf_counter(), 0
        inflight, calls, lane_load = {}, {}, [0] * self.lanes
        report = progress or (lambda **kw: None)
        report(done=reused, total=total, reused=reused, eta=None)
        while todo or inflight:
            while todo and min(lane_load) < WINDOW:
                lane = lane_load.index(min(lane_load))
                i = todo.popleft()
                lane_load[lane] += 1
                inflight[i] = self._start(i, items[i], lane, calls)
            for handle, value in ex.wait():
                i, kind = calls.pop(handle)
                state = inflight[i]
                if kind == "reference":
                    state["reference"] = value
                    self._compare(i, state, calls, state["big"])
                else:
                    state["parts"].update(value)
                    state["waiting"] -= 1
                if state["waiting"] == 0 and (self.reference is None or "reference" in state):
                    results[i] = self._finish(items[i], keys[i], state, images_dir)
                    if state["big"] is not None:
                        ex.release(state["big"])
                    lane_load[state["lane"]] -= 1
                    del inflight[i]
                    computed += 1
                    elapsed = time.perf_counter() - start
                    report(done=reused + computed, total=total, reused=reused,
                           eta=elapsed / computed * (total - reused - computed))
        return results, {"images": total, "reused": reused, "computed": computed,
                         "seconds": round(time.perf_counter() - start, 1)}

    def _start(self, i, item, lane, calls):
        payload = self.executor.share(item.payload())
        state = {"lane": lane, "payload": payload, "parts": {}, "waiting": 0, "big": None}
        if self.reference is None:
            self._compare(i, state, calls, None)
            return state
        host = next(h for h, group in self.hosts_of(lane) if self.reference in group)
        small, big = self.executor.submit2(host, "reference", payload, self.reference)
        calls[small] = (i, "reference")
        state["big"] = big
        return state

    def _compare(self, i, state, calls, big):
        for host, group in self.hosts_of(state["lane"]):
            names = [n for n in group if n != self.reference]
            if names:
                calls[self.executor.submit(host, "compare", state["payload"], big, names)] = (i, "compare")
                state["waiting"] += 1

    def _finish(self, item, key, state, images_dir):
        result = {"schema": RESULT_SCHEMA, "key": key, "id": item.id, "path": os.path.abspath(item.path),
                  "sha256": item.sha256, "label_sha256": item.label_sha256, "size": list(self.size),
                  "reference": None, "backends": {}}
        maps = {}
        if self.reference is not None:
            ref = dict(state["reference"])
            maps.update({k: ref.pop(k) for k in ("input", "classes") if k in ref})
            result["reference"] = {"name": self.reference, **ref}
        for name, entry in sorted(state["parts"].items()):
            entry = dict(entry)
            if "classes" in entry:
                maps[name] = entry.pop("classes")
            png = entry.pop("diff_png", None)
            if png is not None and images_dir:
                entry["diff_png"] = f"{key}.{name}.png"
                write_bytes_atomic(os.path.join(images_dir, entry["diff_png"]), png)
            result["backends"][name] = entry
        if images_dir:
            write_json_atomic(os.path.join(images_dir, key + ".json"), result)   # last: the image is done
        if maps:
            result = dict(result, maps=maps)
        return result
