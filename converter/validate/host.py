"""A worker's side of the engine: some backends, loaded once, fed images.

A Host runs in its own process (a local worker or a Ray actor) and holds the
runners of the backends it was given. For each image the engine asks

- the host of the reference: reference(item) -> (small, big), where big holds
  the reference's class map and logits at the model's size (the only large
  object, dropped as soon as every backend has compared against it);
- every host: compare(item, big, names) -> small results per backend.

Small results are what an image leaves behind: agreement, flip margins,
logit-error statistics, the confusion matrices against the reference's map
and against ground truth, a 1-bit PNG of where the maps differ, and seconds.
Nothing of full resolution survives the call, except the class maps when
the caller asks for them (parity's report draws them for its few images).

An item is {"id", "image": bytes, "label": bytes or None}: the driver reads
the files and ships their bytes, so workers on other machines need the
models (at the same workdir path, checked against their sha256 here) but not
the images.
"""
import io
import os
import time

import numpy as np

# Set by the engine's tests only: the first compare() of a fresh host in a
# run kills its own process once (a marker file records that it happened),
# so that a worker's death and Ray's retry can be tested for real.
CRASH_ONCE_ENV = "OCRNET_VALIDATE_CRASH_ONCE"


def _die_with_parent():
    """Linux: SIGKILL this worker when the driver dies, even by SIGKILL."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def verify_files(files):
    from converter.errors import StageError
    from converter.util.fsutil import file_digest

    for path, sha in sorted(files.items()):
        if not os.path.isfile(path) or file_digest(path) != sha:
            raise StageError(f"{path}: missing or not the file the driver verified (sha256 differs) on "
                             f"{os.uname().nodename}")


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


class Host:
    def __init__(self, spec):
        """spec: {"backends": [{name, runtime, model, files {path: sha256},
        precision, contract, output}], "threads", "size": [W, H],
        "num_classes", "keep_maps"}."""
        from converter.runners import make_runner

        _die_with_parent()
        self.spec = spec
        self.size = tuple(spec["size"])
        self.num = spec["num_classes"]
        self.backends, self.runners, self.load_seconds = {}, {}, {}
        for b in spec["backends"]:
            verify_files(b["files"])
            start = time.perf_counter()
            self.runners[b["name"]] = make_runner(b["runtime"], b["model"], threads=spec["threads"], logits=True,
                                                  precision=b["precision"])
            self.load_seconds[b["name"]] = round(time.perf_counter() - start, 2)
            self.backends[b["name"]] = b
        self.calls = 0

    def describe(self):
        from converter.runners.worker import peak_rss_mb

        return {"node": os.uname().nodename, "pid": os.getpid(), "threads": self.spec["threads"],
                "load_seconds": self.load_seconds, "peak_rss_mb": peak_rss_mb(),
                "info": {n: r.info for n, r in self.runners.items()}}

    def _decode(self, item):
        from converter.commands.evaluate import load_gt
        from converter.data.images import load_rgb, resize_rgb

        rgb = load_rgb(item["id"], data=item["image"])
        gt = None
        if item.get("label") is not None:
            gt = load_gt(item["id"] + " (labels)", data=item["label"])
            if gt.shape != rgb.shape[:2]:
                from converter.errors import ConverterError
                raise ConverterError(f"{item['id']}: its labels are {gt.shape[1]}x{gt.shape[0]}, "
                                     f"the image {rgb.shape[1]}x{rgb.shape[0]}")
        return resize_rgb(rgb, *self.size), gt

    def _run(self, name, rgb):
        from converter.data.images import prepare

        b = self.backends[name]
        start = time.perf_counter()
        out = self.runners[name].infer(prepare(rgb, b["contract"]))
        seconds = time.perf_counter() - start
        return np.asarray(out[b["output"]])[0].astype(np.uint8), np.asarray(out["logits"], np.float32)[0], seconds

    def reference(self, item, name):
        """(small, big) for the reference backend `name` on item."""
        from converter.data.cityscapes import confusion_matrix

        rgb, gt = self._decode(item)
        classes, logits, seconds = self._run(name, rgb)
        small = {"seconds": round(seconds, 3),
                 "conf_gt": None if gt is None else confusion_matrix(gt, _at(classes, gt.shape), self.num).tolist()}
        if self.spec.get("keep_maps"):
            small["classes"] = classes
            small["input"] = rgb
        return small, {"classes": classes, "logits": logits}

    def compare(self, item, ref, names):
        """{backend: small results} for the named backends of this host;
        ref: the reference's big output (None when there is no reference)."""
        from converter.data.cityscapes import confusion_matrix
        from converter.stages.parity_gates import compare

        self._maybe_crash()
        rgb, gt = self._decode(item)
        out = {}
        for name in names:
            classes, logits, seconds = self._run(name, rgb)
            entry = {"seconds": round(seconds, 3), "precision": self.runners[name].info.get("effective_precision"),
                     "conf_gt": None if gt is None else confusion_matrix(gt, _at(classes, gt.shape),
                                                                         self.num).tolist()}
            if ref is not None:
                entry["compare"] = compare(ref["classes"], classes, ref["logits"], logits, self.num)
                entry["conf_ref"] = confusion_matrix(ref["classes"], classes, self.num).tolist()
                entry["diff_png"] = _mask_png(ref["classes"] != classes)
            if self.spec.get("keep_maps"):
                entry["classes"] = classes
            out[name] = entry
            del logits
        return out

    def _maybe_crash(self):
        marker = os.environ.get(CRASH_ONCE_ENV)
        self.calls += 1
        if marker and self.calls == 1 and not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(str(os.getpid()))
            os._exit(17)
