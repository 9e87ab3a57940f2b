"""package: a build as deployable layouts and a verifiable release archive.

DIST/ovms/      an OpenVINO Model Server repository: models/<model>-<precision>/1/model.{xml,bin}
                and config.json (model_config_list) naming each
DIST/omz/       Open Model Zoo's layout: public/<model>/<FP32|FP16|FP32-INT8>/<model>.{xml,bin}
DIST/model_api/ the Model API flavour (Softmax scores): <FP32|FP16|INT8>/<model>.{xml,bin}
DIST/<model>-<version>.tar.gz
                the IRs (both flavours), the ONNX, MANIFEST.json, the model card, the parity report,
                LICENSE (Apache-2.0), NOTICE, and SHA256SUMS of every other member

The archive is reproducible: members sorted, every mtime 0, uid/gid 0 with
no names, modes 0644/0755, and gzip without a timestamp or file name, so two
packages of one build are byte-identical. A build is packaged only when its
files match MANIFEST.json (else exit 8) and its parity gate passed (else
exit 10), unless --allow-unverified, which the archive then says in
UNVERIFIED.txt. `package --verify ARCHIVE` checks an archive (see verify).
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import zlib

from converter import __version__
from converter.errors import ChecksumError, ConverterError, ParityFailure, StageError
from converter.records import (MODEL_STEM, ONNX_PATH, STAGES, ir_path, read_json, record_files, record_path,
                               verify_build)
from converter.stages.model_api import flavour_path
from converter.util.fsutil import file_digest, staging_dir, write_bytes_atomic

# precision -> (its OMZ folder name, the record stage that built it)
PRECISIONS = {"FP32": ("FP32", "openvino"), "FP16": ("FP16", "openvino"),
              # quantized from the FP32 IR: OMZ called that FP32-INT8 (FP16-INT8 when from FP16)
              "INT8": ("FP32-INT8", "quantize")}
CHUNK = 1 << 20
MAX_MEMBERS = 1000


def _license_text():
    from converter.config import package_path

    with open(package_path("LICENSE.txt"), "rb") as fh:
        return fh.read()


def notice(config, weights, unverified):
    lines = [f"{config.name} {__version__}", "",
             "The model architecture and the published weights come from PaddleSeg",
             "(https://github.com/PaddlePaddle/PaddleSeg, release-2.3), Copyright PaddlePaddle Authors,",
             "licensed under the Apache License, Version 2.0 (LICENSE).",
             "Converted and packaged by ocrnet-convert (Apache-2.0).", ""]
    if (weights or {}).get("kind") == "synthetic":
        lines += [f"These files carry SYNTHETIC weights (seed {weights.get('seed')}), not the published "
                  "checkpoint: their outputs are not meaningful segmentations.", ""]
    if unverified:
        lines += ["Packaged with --allow-unverified: see UNVERIFIED.txt.", ""]
    return "\n".join(lines).encode()


def _check_build(workdir, allow_unverified):
    """(records, manifest, problems): problems are what --allow-unverified waives."""
    problems = []
    built = [s for s in ("export", "onnx", "openvino", "quantize", "model_api")
             if os.path.lexists(record_path(workdir, s))]
    for stage in ("openvino", "model_api"):
        if stage not in built:
            raise StageError(f"missing {record_path(workdir, stage)}: run make convert first")
    records = verify_build(workdir, built)
    flavours = set(records["model_api"].files)
    irs = {p for p, (_, stage) in PRECISIONS.items() if stage in records}
    if flavours != irs:
        raise StageError(f"the Model API flavours ({', '.join(sorted(flavours))}) are not those of the IRs "
                         f"({', '.join(sorted(irs))}): run ocrnet-convert model-api")
    manifest = read_json(os.path.join(workdir, "MANIFEST.json"), "manifest")
    listed = {f.get("path"): f for f in manifest.get("files", []) if isinstance(f, dict)}
    for stage in [s for s in built if s != "export"]:   # what goes into the package
        # verify_build has just checked these files against their records' sha256
        for path, meta in record_files(os.path.join(workdir, STAGES[stage][0]), stage, records[stage]):
            rel = os.path.relpath(path, workdir)
            if listed.get(rel, {}).get("sha256") != meta["sha256"]:
                problems.append(f"{rel} does not match MANIFEST.json (rerun the manifest stage)")
    report = os.path.join(workdir, "parity", "report.json")
    for rel in ("parity/report.json", "parity/report.md"):
        path = os.path.join(workdir, rel)
        if os.path.isfile(path) and listed.get(rel, {}).get("sha256") != file_digest(path):
            problems.append(f"{rel} does not match MANIFEST.json (rerun the manifest stage)")
    parity = read_json(report, "parity report") if os.path.lexists(report) else None
    if parity is None or parity.get("passed") is not True:
        problems.append("the parity gate " + ("was not run" if parity is None else "did not pass"))
    if problems and not allow_unverified:
        first = problems[0]
        if first.startswith("the parity gate"):
            raise ParityFailure(f"refusing to package: {first} (see {report}); --allow-unverified overrides")
        raise StageError(f"refusing to package: {first}; --allow-unverified overrides")
    return records, manifest, parity, problems


def _tar_info(name, size, directory=False):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    return info


def write_archive(path, top, members):
    """members: {archive path under top: bytes or a file path}. Adds SHA256SUMS."""
    sums = []
    for rel in sorted(members):
        src = members[rel]
        digest = hashlib.sha256(src).hexdigest() if isinstance(src, bytes) else file_digest(src)
        sums.append(f"{digest}  {rel}\n")
    members = dict(members, SHA256SUMS="".join(sums).encode())
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                dirs = sorted({os.path.dirname(rel) for rel in members} - {""})
                names = sorted({d2 for d in dirs for d2 in _parents(d)} | {""})
                for d in names:
                    tar.addfile(_tar_info(f"{top}/{d}".rstrip("/"), 0, directory=True))
                for rel in sorted(members):
                    src = members[rel]
                    if isinstance(src, bytes):
                        tar.addfile(_tar_info(f"{top}/{rel}", len(src)), io.BytesIO(src))
                    else:
                        with open(src, "rb") as fh:
                            tar.addfile(_tar_info(f"{top}/{rel}", os.path.getsize(src)), fh)


def _parents(folder):
    parts = folder.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def run_package(config, workdir, dist, allow_unverified=False):
    records, manifest, parity, problems = _check_build(workdir, allow_unverified)
    precisions = [p for p, (_, stage) in PRECISIONS.items() if stage in records]
    model, version = MODEL_STEM, __version__
    top = f"{model}-{version}"
    members = {}
    for p in precisions:
        xml = os.path.join(workdir, ir_path(p))
        members[f"openvino/{p}/{model}.xml"] = xml
        members[f"openvino/{p}/{model}.bin"] = xml[:-4] + ".bin"
        # at its workdir path, so that --verify checks it against the MANIFEST too
        xml = os.path.join(workdir, flavour_path(p))
        members[flavour_path(p)] = xml
        members[flavour_path(p)[:-4] + ".bin"] = xml[:-4] + ".bin"
    if "onnx" in records:
        members[f"onnx/{os.path.basename(ONNX_PATH)}"] = os.path.join(workdir, ONNX_PATH)
    for rel in ("MANIFEST.json", "README.md", "parity/report.json", "parity/report.md"):
        if os.path.isfile(os.path.join(workdir, rel)):
            members[rel] = os.path.join(workdir, rel)
    members["LICENSE"] = _license_text()
    members["NOTICE"] = notice(config, records["openvino"].weights, bool(problems))
    if problems:
        members["UNVERIFIED.txt"] = ("Packaged with --allow-unverified despite:\n"
                                     + "".join(f"- {p}\n" for p in problems)).encode()
    os.makedirs(dist, exist_ok=True)
    ovms_models = []
    with staging_dir(os.path.join(dist, "ovms")) as tmp:
        for p in precisions:
            name = f"{model}-{p.lower()}"
            folder = os.path.join(tmp, "models", name, "1")
            os.makedirs(folder)
            for ext in ("xml", "bin"):
                shutil.copyfile(members[f"openvino/{p}/{model}.{ext}"], os.path.join(folder, f"model.{ext}"))
            ovms_models.append({"config": {"name": name, "base_path": f"models/{name}"}})
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump({"model_config_list": ovms_models}, fh, indent=2, sort_keys=True)
            fh.write("\n")
    with staging_dir(os.path.join(dist, "omz")) as tmp:
        for p in precisions:
            folder = os.path.join(tmp, "public", model, PRECISIONS[p][0])
            os.makedirs(folder)
            for ext in ("xml", "bin"):
                shutil.copyfile(members[f"openvino/{p}/{model}.{ext}"], os.path.join(folder, f"{model}.{ext}"))
    with staging_dir(os.path.join(dist, "model_api")) as tmp:
        for p in precisions:
            os.makedirs(os.path.join(tmp, p))
            for ext in ("xml", "bin"):
                shutil.copyfile(members[flavour_path(p)[:-3] + ext], os.path.join(tmp, p, f"{model}.{ext}"))
    archive = os.path.join(dist, f"{top}.tar.gz")
    part = archive + f".{os.getpid()}.part"
    try:
        write_archive(part, top, members)
        os.replace(part, archive)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    digest = file_digest(archive)
    write_bytes_atomic(os.path.join(dist, f"{top}.tar.gz.sha256"), f"{digest}  {os.path.basename(archive)}\n".encode())
    return {"archive": archive, "sha256": digest, "precisions": precisions,
            "members": sorted(members) + ["SHA256SUMS"], "unverified": problems}


def verify(archive):
    """Check every member against SHA256SUMS and the MANIFEST it carries;
    returns a one-line verdict or raises ChecksumError (exit 5)."""
    def fail(why):
        raise ChecksumError(f"{archive}: {why}")

    if not os.path.isfile(archive):
        raise ConverterError(f"{archive}: not a file")
    digests, sums_text, manifest_bytes = {}, None, None
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            top = None
            for n, member in enumerate(tar):
                if n >= MAX_MEMBERS:
                    fail(f"more than {MAX_MEMBERS} members")
                name = member.name
                parts = name.split("/")
                if name.startswith("/") or ".." in parts or "" in parts[1:] or "\\" in name:
                    fail(f"member {name[:80]!r} has an absolute or escaping path")
                if not (member.isfile() or member.isdir()):
                    fail(f"member {name[:80]!r} is a link or special file")
                top = top or parts[0]
                if parts[0] != top:
                    fail(f"member {name[:80]!r} is outside the archive's folder {top}")
                if member.isdir():
                    continue
                rel = "/".join(parts[1:])
                if rel in digests:
                    fail(f"member {rel} appears twice")
                h, fh = hashlib.sha256(), tar.extractfile(member)
                keep = rel in ("SHA256SUMS", "MANIFEST.json")
                data = []
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    h.update(chunk)
                    if keep:
                        data.append(chunk)
                digests[rel] = h.hexdigest()
                if rel == "SHA256SUMS":
                    sums_text = b"".join(data)
                elif rel == "MANIFEST.json":
                    manifest_bytes = b"".join(data)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        fail(f"not a readable .tar.gz ({type(exc).__name__})")
    if sums_text is None:
        fail("no SHA256SUMS member")
    listed = {}
    for line in sums_text.decode("utf-8", "replace").splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel] = digest
    for rel, digest in sorted(listed.items()):
        if rel not in digests:
            fail(f"member {rel} is listed in SHA256SUMS but missing")
        if digests[rel] != digest:
            fail(f"member {rel} does not match its SHA256SUMS entry")
    extra = sorted(set(digests) - set(listed) - {"SHA256SUMS"})
    if extra:
        fail(f"member {extra[0]} is not listed in SHA256SUMS")
    checked = 0
    if manifest_bytes is not None:
        try:
            manifest = json.loads(manifest_bytes)
            files = {f["path"]: f["sha256"] for f in manifest["files"]}
        except (ValueError, KeyError, TypeError):
            fail("MANIFEST.json is not a manifest")
        for rel, digest in digests.items():
            if rel in files:
                checked += 1
                if files[rel] != digest:
                    fail(f"member {rel} does not match MANIFEST.json")
    return (f"OK: {os.path.basename(archive)}: {len(listed)} members match SHA256SUMS, "
            f"{checked} of them MANIFEST.json")
