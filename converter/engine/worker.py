"""A worker's side of the engine: one backend loaded at a time, a chunk of images held.

A Worker runs in its own process (a local worker or a Ray actor). The engine
drives it through a chunk of images at a time, with these calls, in order:

    begin(slot, item)   decode the image (and its labels) and keep them
    load(name)          load that backend, after unloading the one before
    reference(slot)     run the loaded reference; keep its class map and logits
    compare(slot)       run the loaded backend; compare with the kept reference
    end(slot)           forget the slot

So the reference's full-resolution outputs never leave the process that
computed them, and only small results travel: agreement, flip margins,
logit-error statistics, confusion matrices, a 1-bit PNG of where the maps
differ, and seconds. Parity asks for the class maps too (keep_maps) to draw
its report.

Why one backend at a time: every runtime keeps its activation memory after a
run, so a process holding the six backends at full size peaked at 11.8 GB
(13.2 GB with four images), while each alone peaks at 2-3.6 GB (bench). A
runtime is unloaded (its objects dropped, then malloc_trim) before the next
one loads; measured at 1024x2048 this keeps the worker's peak RSS at its
largest backend's plus the chunk's reference outputs (docs/validate.md).

An item is {"id", "image": bytes, "label": bytes or None}: the driver reads
the files and ships their bytes, so workers on other machines need the
models (at the same workdir path, checked against their sha256 here) but not
the images.
"""
from __future__ import annotations

import io
import os
import time

import numpy as np

from converter.util.memory import peak_rss_mb, release_memory
from converter.util.process import die_with_parent


def verify_files(files: dict[str, str], verified: dict) -> None:
    """Each model file must be the one the driver verified (sha256); a file
    whose size, inode and mtime are unchanged since it was hashed here is
    not hashed again."""
    from converter.errors import StageError
    from converter.util.fsutil import file_digest

    for path, sha in sorted(files.items()):
        try:
            st = os.stat(path)
        except OSError:
            st = None
        stamp = st and (st.st_size, st.st_ino, st.st_mtime_ns)
        if stamp and verified.get(path) == (stamp, sha):
            continue
        if st is None or not os.path.isfile(path) or file_digest(path) != sha:
            raise StageError(f"{path}: missing or not the file the driver verified (sha256 differs) on "
                             f"{os.uname().nodename}")
        verified[path] = (stamp, sha)


def _mask_png(mask):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _at(classes, shape):
    """A class map brought to shape (H, W) with nearest-neighbour, as labels are."""
    from PIL import Image

    if classes.shape == tuple(shape):
        return classes
    return np.asarray(Image.fromarray(classes.astype(np.uint8)).resize((shape[1], shape[0]), Image.NEAREST))


class Worker:
    def __init__(self, spec):
        """spec: {"backends": {name: {name, runtime, model, files {path: sha256},
        precision, contract, output, and optionally logits (default true)
        and options (the runner's keyword arguments)}}, "threads", "size": [W, H],
        "num_classes", "keep_maps"}. Nothing is loaded yet."""
        die_with_parent()
        self.spec = spec
        self.size = tuple(spec["size"])
        self.num = spec["num_classes"]
        self.name, self.runner = None, None
        self.slots, self.verified = {}, {}
        self.load_seconds, self.info = {}, {}

    def describe(self) -> dict:
        return {"node": os.uname().nodename, "pid": os.getpid(), "threads": self.spec["threads"],
                "load_seconds": self.load_seconds, "peak_rss_mb": peak_rss_mb(), "info": self.info}

    def load(self, name: str) -> dict:
        """Load backend `name` (a no-op when it is the one loaded)."""
        from converter.runners import make_runner

        if name == self.name:
            return {"load_seconds": 0.0}
        self.unload()
        b = self.spec["backends"][name]
        verify_files(b["files"], self.verified)
        start = time.perf_counter()
        self.runner = make_runner(b["runtime"], b["model"], threads=self.spec["threads"],
                                  logits=b.get("logits", True), precision=b["precision"], **b.get("options", {}))
        self.name = name
        seconds = round(time.perf_counter() - start, 2)
        self.load_seconds[name] = round(self.load_seconds.get(name, 0.0) + seconds, 2)
        self.info[name] = self.runner.info
        return {"load_seconds": seconds}

    def unload(self) -> None:
        if self.runner is not None:
            self.runner, self.name = None, None
            release_memory()

    def begin(self, slot: int, item: dict) -> dict:
        from converter.data.images import load_rgb, resize_rgb

        start = time.perf_counter()
        # the driver decoded both once already (items.check_decodes)
        rgb = load_rgb(item["name"], data=item["image"])
        gt = None
        if item.get("label") is not None:
            from converter.data.cityscapes import load_gt

            gt = load_gt(item["label_name"], data=item["label"])
        self.slots[slot] = {"rgb": resize_rgb(rgb, *self.size), "gt": gt, "ref": None}
        return {"decode_seconds": round(time.perf_counter() - start, 3)}

    def end(self, slot: int) -> None:
        self.slots.pop(slot, None)
        return None

    def _run(self, slot):
        from converter.data.images import prepare

        b = self.spec["backends"][self.name]
        start = time.perf_counter()
        out = self.runner.infer(prepare(self.slots[slot]["rgb"], b["contract"]))
        seconds = time.perf_counter() - start
        classes = np.asarray(out[b["output"]])[0].astype(np.uint8)
        logits = np.asarray(out["logits"], np.float32)[0]
        del out
        return classes, logits, seconds

    def time(self, slot: int, repeat: int) -> list[float]:
        """The loaded backend's seconds for each of `repeat` runs on the slot's
        image, prepared once (bench: the first run, then the steady ones)."""
        from converter.data.images import prepare

        x = prepare(self.slots[slot]["rgb"], self.spec["backends"][self.name]["contract"])
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            self.runner.infer(x)
            seconds.append(round(time.perf_counter() - start, 3))
        return seconds

    def _conf_gt(self, slot, classes):
        from converter.data.cityscapes import confusion_matrix

        gt = self.slots[slot]["gt"]
        return None if gt is None else confusion_matrix(gt, _at(classes, gt.shape), self.num).tolist()

    def reference(self, slot: int) -> dict:
        """Small results of the loaded reference on the slot; its class map
        and logits stay here for the backends that follow."""
        classes, logits, seconds = self._run(slot)
        self.slots[slot]["ref"] = {"classes": classes, "logits": logits}
        small = {"seconds": round(seconds, 3), "conf_gt": self._conf_gt(slot, classes)}
        if self.spec.get("keep_maps"):
            small.update(classes=classes, input=self.slots[slot]["rgb"])
        return small

    def compare(self, slot: int) -> dict:
        """Small results of the loaded backend on the slot, against the
        reference kept for it (if any)."""
        from converter.data.cityscapes import confusion_matrix
        from converter.engine.gates import compare

        classes, logits, seconds = self._run(slot)
        start = time.perf_counter()
        entry = {"seconds": round(seconds, 3), "precision": self.runner.info.get("effective_precision"),
                 "conf_gt": self._conf_gt(slot, classes)}
        ref = self.slots[slot]["ref"]
        if ref is not None:
            entry["compare"] = compare(ref["classes"], classes, ref["logits"], logits, self.num)
            entry["conf_ref"] = confusion_matrix(ref["classes"], classes, self.num).tolist()
            entry["diff_png"] = _mask_png(ref["classes"] != classes)
        del logits
        entry["compare_seconds"] = round(time.perf_counter() - start, 3)
        if self.spec.get("keep_maps"):
            entry["classes"] = classes
        return entry
