"""Choose the weights for export: the real checkpoint or seeded synthetic ones.

    auto        the release-2.3 checkpoint if cached or downloadable, else
                synthetic weights (with a loud banner; recorded as such)
    pretrained  the real checkpoint, or a clear error
    synthetic   seeded synthetic weights (see synthetic.py)
    PATH        a local .pdparams, checked against the config's sha384
"""
import os
from dataclasses import dataclass

from converter.stages import fetch
from converter.errors import CheckpointError, ChecksumError, FetchError
from converter.util.cache import default_cache_dir
from converter.util.log import banner, info


@dataclass
class WeightsChoice:
    kind: str            # "pretrained" or "synthetic"
    path: str = ""       # checkpoint file, when kind is "pretrained"
    provenance: dict = None
    sha384: str = ""     # of the file as verified; the loader refuses other bytes
    cache_dir: str = ""  # the user's cache (calibrated synthetic weights are kept there too)


def _synthetic(seed, reason=None):
    prov = {"kind": "synthetic", "seed": seed,
            "method": "He-normal convs, BatchNorm statistics and classifier recalibrated on the bundled sample images"}
    if reason:
        prov["reason"] = reason
    return WeightsChoice("synthetic", "", prov)


def _real(path, config, digest, verified=True):
    """digest: the sha384 computed from the file itself, never the config's claim."""
    return WeightsChoice("pretrained", path, {
        "kind": "pretrained", "file": os.path.abspath(path), "sha384": digest,
        "verified": verified, "source": config.checkpoint.source}, digest)


def _get_checkpoint(config, cache_dir, mirror, offline):
    cached = fetch.cached_checkpoint(config, cache_dir)  # verified, or deleted and ChecksumError
    if cached:
        return cached
    if offline:
        raise FetchError("offline mode (OCRNET_CONVERT_OFFLINE=1): the checkpoint is not in the cache")
    progress = "bar" if os.isatty(2) else "quiet"
    path, _ = fetch.fetch_file(config.checkpoint, os.path.join(cache_dir, "downloads"), cache_dir,
                               mirror=mirror, progress=fetch.Progress(progress),
                               timeouts=(5.0, 30.0), retries=2)
    return path


def resolve_weights(config, choice="auto", seed=0, cache_dir=None, mirror=None,
                    allow_unverified=False):
    import dataclasses

    cache_dir = cache_dir or default_cache_dir()
    return dataclasses.replace(_resolve(config, choice, seed, cache_dir, mirror, allow_unverified),
                               cache_dir=cache_dir)


def _resolve(config, choice, seed, cache_dir, mirror, allow_unverified):
    offline = os.environ.get("OCRNET_CONVERT_OFFLINE") == "1"
    if choice == "synthetic":
        return _synthetic(seed)
    local = fetch.local_source(config.checkpoint)
    if choice in ("auto", "pretrained") and local:
        choice = local   # the user's own checkpoint, where `init` found it (verified below)
    if choice in ("auto", "pretrained"):
        try:
            path = _get_checkpoint(config, cache_dir, mirror, offline)
            return _real(path, config, config.checkpoint.sha384)  # just verified by sha384
        except ChecksumError:
            raise  # a poisoned cache or a bad download is reported, never papered over
        except FetchError as exc:
            if choice == "pretrained":
                raise FetchError(f"the pretrained checkpoint is not available: {exc}") from None
            banner(["NO PRETRAINED CHECKPOINT: USING SYNTHETIC WEIGHTS (seed %d)." % seed,
                    "The exported model is NOT the published OCRNet; its outputs mean nothing.",
                    f"Reason: {exc}"[:200],
                    "Get the real one with `ocrnet-convert fetch` (or --mirror / --from)."])
            return _synthetic(seed, reason=str(exc))
    path = choice
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path} (or use auto, pretrained, synthetic)")
    try:
        fetch.verify(path, config.checkpoint, delete_bad=False)
    except ChecksumError as exc:
        if not allow_unverified:
            raise ChecksumError(f"{path}: {exc} (pass --allow-unverified to load it anyway)") from None
        info(f"warning: {exc}; loading it anyway because of --allow-unverified")
        return _real(path, config, fetch.file_sha384(path), verified=False)
    return _real(path, config, config.checkpoint.sha384)
