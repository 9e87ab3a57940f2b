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
UNVERIFIED.txt. `package --verify ARCHIVE` checks an archive (commands/verify.py).
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

from converter import __version__
from converter.errors import GateNotPassed, StageError
from converter.layout import Workdir, flavour_path, onnx_path
from converter.records import read_json, record_files, verify_build
from converter.util.fsutil import file_digest, scratch_dir

# precision -> (its OMZ folder name, the record stage that built it)
PRECISIONS = {"FP32": ("FP32", "openvino"), "FP16": ("FP16", "openvino"),
              # quantized from the FP32 IR: OMZ called that FP32-INT8 (FP16-INT8 when from FP16)
              "INT8": ("FP32-INT8", "quantize")}


def _license_text():
    from converter.config import package_path

    with open(package_path("LICENSE.txt"), "rb") as fh:
        return fh.read()


def notice(config, weights, unverified):
    published = config.published_accuracy is not None
    lines = [f"{config.name} {__version__}", "",
             ("The model architecture and the published weights come from PaddleSeg" if published else
              f"The model ({config.architecture}) and its weights are its owner's; PaddleSeg"),
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
    problems, workdir = [], Workdir.of(workdir)
    built = [s for s in ("export", "onnx", "openvino", "quantize", "model_api")
             if os.path.lexists(workdir.record(s))]
    for stage in ("openvino", "model_api"):
        if stage not in built:
            raise StageError(f"missing {workdir.record(stage)}: run make convert first")
    records = verify_build(workdir, built)
    flavours = set(records["model_api"].files)
    irs = {p for p, (_, stage) in PRECISIONS.items() if stage in records}
    if flavours != irs:
        raise StageError(f"the Model API flavours ({', '.join(sorted(flavours))}) are not those of the IRs "
                         f"({', '.join(sorted(irs))}): run ocrnet-convert model-api")
    manifest = read_json(workdir.manifest, "manifest")
    listed = {f.get("path"): f for f in manifest.get("files", []) if isinstance(f, dict)}
    for stage in [s for s in built if s != "export"]:   # what goes into the package
        # verify_build has just checked these files against their records' sha256
        for path, meta in record_files(workdir.stage_folder(stage), stage, records[stage]):
            rel = os.path.relpath(path, workdir)
            if listed.get(rel, {}).get("sha256") != meta["sha256"]:
                problems.append(f"{rel} does not match MANIFEST.json (run ocrnet-convert manifest)")
    report = workdir.parity_report
    for rel in ("parity/report.json", "parity/report.md"):
        path = workdir.file(rel)
        if os.path.isfile(path) and listed.get(rel, {}).get("sha256") != file_digest(path):
            problems.append(f"{rel} does not match MANIFEST.json (run ocrnet-convert manifest)")
    parity = read_json(report, "parity report") if os.path.lexists(report) else None
    if parity is None or parity.get("passed") is not True:
        problems.append("the parity gate " + ("was not run" if parity is None else "did not pass"))
    if problems and not allow_unverified:
        first = problems[0]
        if first.startswith("the parity gate"):
            raise GateNotPassed(f"refusing to package: {first} (see {report}); --allow-unverified overrides")
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


def _members(config, workdir, records, precisions, problems):
    """{archive path: bytes or the file to take them from}."""
    model, workdir = config.name, Workdir.of(workdir)
    members = {}
    for p in precisions:
        xml = workdir.ir(p, model)
        members[f"openvino/{p}/{model}.xml"] = xml
        members[f"openvino/{p}/{model}.bin"] = xml[:-4] + ".bin"
        # at its workdir path, so that --verify checks it against the MANIFEST too
        xml = workdir.flavour(p, model)
        members[flavour_path(p, model)] = xml
        members[flavour_path(p, model)[:-4] + ".bin"] = xml[:-4] + ".bin"
    if "onnx" in records:
        members[onnx_path(model)] = workdir.onnx(model)
    for rel in ("MANIFEST.json", "README.md", "parity/report.json", "parity/report.md"):
        if os.path.isfile(workdir.file(rel)):
            members[rel] = workdir.file(rel)
    members["LICENSE"] = _license_text()
    members["NOTICE"] = notice(config, records["openvino"].weights, bool(problems))
    if problems:
        members["UNVERIFIED.txt"] = ("Packaged with --allow-unverified despite:\n"
                                     + "".join(f"- {p}\n" for p in problems)).encode()
    return members


def _layouts(root, members, precisions, model):
    """root/ovms, root/omz and root/model_api, complete, for these precisions only."""
    ovms_models = []
    for p in precisions:
        name = f"{model}-{p.lower()}"
        folder = os.path.join(root, "ovms", "models", name, "1")
        os.makedirs(folder)
        for ext in ("xml", "bin"):
            shutil.copyfile(members[f"openvino/{p}/{model}.{ext}"], os.path.join(folder, f"model.{ext}"))
        ovms_models.append({"config": {"name": name, "base_path": f"models/{name}"}})
        folder = os.path.join(root, "omz", "public", model, PRECISIONS[p][0])
        os.makedirs(folder)
        for ext in ("xml", "bin"):
            shutil.copyfile(members[f"openvino/{p}/{model}.{ext}"], os.path.join(folder, f"{model}.{ext}"))
        os.makedirs(os.path.join(root, "model_api", p))
        for ext in ("xml", "bin"):
            shutil.copyfile(members[flavour_path(p, model)[:-3] + ext],
                            os.path.join(root, "model_api", p, f"{model}.{ext}"))
    with open(os.path.join(root, "ovms", "config.json"), "w") as fh:
        json.dump({"model_config_list": ovms_models}, fh, indent=2, sort_keys=True)
        fh.write("\n")


LAYOUTS = ("ovms", "omz", "model_api")


def _refuse_links(dist, names):
    for name in names:
        target = os.path.join(dist, name)
        if os.path.islink(target) or (os.path.lexists(target) and (name in LAYOUTS) != os.path.isdir(target)):
            raise StageError(f"refusing to replace {target}: it is a symbolic link, or a file where a folder "
                             "goes (or the reverse)")


def _publish(staged, dist, names):
    """Move the staged layouts and files into dist: each layout folder
    replaces the old one whole (a stale INT8 from an earlier package goes
    with it); a symlink at a layout's place is refused, never written
    through."""
    _refuse_links(dist, names)
    for name in names:
        target, old = os.path.join(dist, name), os.path.join(dist, f".{name}.{os.getpid()}.old")
        if name in LAYOUTS and os.path.isdir(target):
            os.replace(target, old)
            os.replace(os.path.join(staged, name), target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(os.path.join(staged, name), target)


def run_package(config, workdir, dist, allow_unverified=False):
    """The layouts and the archive are built in a staging folder inside
    dist and published together at the end: an interrupted run leaves dist
    as it was."""
    records, manifest, parity, problems = _check_build(workdir, allow_unverified)
    precisions = [p for p, (_, stage) in PRECISIONS.items() if stage in records]
    top = f"{config.name}-{__version__}"
    members = _members(config, workdir, records, precisions, problems)
    os.makedirs(dist, exist_ok=True)
    archive_name = f"{top}.tar.gz"
    _refuse_links(dist, LAYOUTS + (archive_name, archive_name + ".sha256"))   # before minutes of work
    with scratch_dir(os.path.join(dist, "package")) as staged:
        _layouts(staged, members, precisions, config.name)
        write_archive(os.path.join(staged, archive_name), top, members)
        digest = file_digest(os.path.join(staged, archive_name))
        with open(os.path.join(staged, archive_name + ".sha256"), "w") as fh:
            fh.write(f"{digest}  {archive_name}\n")
        _publish(staged, dist, LAYOUTS + (archive_name, archive_name + ".sha256"))
    from converter.stages import StageResult

    archive = os.path.join(dist, archive_name)
    return StageResult("package", [archive, archive + ".sha256"],
                       {"archive": archive, "sha256": digest, "precisions": precisions,
                        "members": sorted(members) + ["SHA256SUMS"], "unverified": problems})
