"""package: model_info in the IRs, OVMS/OMZ layouts, the reproducible archive and --verify."""
import gzip
import io
import json
import os
import shutil
import tarfile

import pytest

from converter.commands.package import write_archive
from converter.data.images import SAMPLES_DIR
from tests.support import linked_build, lite_cli

SAMPLE = os.path.join(SAMPLES_DIR, "street_2.jpg")
ARCHIVE = "ocrnet-lite-0.1.0.tar.gz"


def test_every_ir_carries_model_info_for_model_api(lite_build):
    import openvino as ov

    for folder in ("FP32", "FP16", "model_api/FP32", "model_api/FP16"):
        model = ov.Core().read_model(str(lite_build / "openvino" / folder / "ocrnet-lite.xml"))
        info = {k: model.get_rt_info(["model_info", k]).astype(str) for k in
                ("model_type", "labels", "reverse_input_channels", "mean_values", "scale_values", "layout")}
        assert info["model_type"] == "Segmentation"
        labels = info["labels"].split()
        assert len(labels) == 19 and labels[0] == "road" and labels[6] == "traffic_light" and labels[18] == "bicycle"
        # the IR takes BGR 0..255 with its normalisation inside: Model API must feed its BGR image as it is
        assert (info["reverse_input_channels"], info["mean_values"], info["scale_values"]) == ("False", "0 0 0", "1 1 1")
        assert info["layout"] == "x:NCHW"


@pytest.fixture(scope="session")
def packaged(lite_release, tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    proc = lite_cli("package", "--workdir", str(lite_release), "--output", str(dist))
    assert proc.returncode == 0, proc.stderr
    return dist


def test_package_writes_ovms_omz_and_a_reproducible_archive(lite_release, packaged, tmp_path):
    config = json.loads((packaged / "ovms" / "config.json").read_text())
    names = [m["config"]["name"] for m in config["model_config_list"]]
    assert names == ["ocrnet-lite-fp32", "ocrnet-lite-fp16"]
    for name in names:
        for ext in ("xml", "bin"):
            assert (packaged / "ovms" / "models" / name / "1" / f"model.{ext}").is_file()
    for p in ("FP32", "FP16"):
        omz = packaged / "omz" / "public" / "ocrnet-lite" / p / "ocrnet-lite.bin"
        assert omz.read_bytes() == (lite_release / "openvino" / p / "ocrnet-lite.bin").read_bytes()
    with tarfile.open(packaged / ARCHIVE) as tar:
        members = tar.getmembers()
    files = sorted(m.name.split("/", 1)[1] for m in members if m.isfile())
    assert files == sorted(["LICENSE", "NOTICE", "MANIFEST.json", "README.md", "SHA256SUMS",
                            "parity/report.json", "parity/report.md", "onnx/ocrnet-lite.onnx"]
                           + [f"{flavour}/{p}/ocrnet-lite.{e}" for flavour in ("openvino", "openvino/model_api")
                              for p in ("FP32", "FP16") for e in ("xml", "bin")])
    for p in ("FP32", "FP16"):   # the Model API flavour: the same weights, another output
        flavour = packaged / "model_api" / p / "ocrnet-lite"
        parent = lite_release / "openvino" / p / "ocrnet-lite"
        assert flavour.with_suffix(".bin").read_bytes() == parent.with_suffix(".bin").read_bytes()
        assert flavour.with_suffix(".xml").read_bytes() != parent.with_suffix(".xml").read_bytes()
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert [m.name for m in members if m.isfile()] == sorted(m.name for m in members if m.isfile())
    # a second package of the same build: the same bytes
    again = tmp_path / "again"
    proc = lite_cli("package", "--workdir", str(lite_release), "--output", str(again))
    assert proc.returncode == 0, proc.stderr
    assert (again / ARCHIVE).read_bytes() == (packaged / ARCHIVE).read_bytes()
    proc = lite_cli("package", "--verify", str(packaged / ARCHIVE))
    assert proc.returncode == 0 and proc.stdout.startswith("OK:"), proc.stderr
    # every model file (both flavours), the card and the report are checked against the MANIFEST too
    assert "15 members match SHA256SUMS, 11 of them MANIFEST.json" in proc.stdout, proc.stdout
    with tarfile.open(packaged / ARCHIVE) as tar:
        card = tar.extractfile("ocrnet-lite-0.1.0/README.md").read().decode()
    assert card.splitlines()[0].startswith("# ocrnet-lite: SYNTHETIC weights (seed 0)")


def test_a_flipped_byte_in_the_real_archive_fails_verify(packaged, tmp_path):
    bad = tmp_path / ARCHIVE
    shutil.copyfile(packaged / ARCHIVE, bad)
    with open(bad, "r+b") as fh:
        fh.seek(os.path.getsize(bad) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x01]))
    proc = lite_cli("package", "--verify", str(bad))
    assert proc.returncode == 5 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_verify_against_a_trusted_sha256_catches_a_self_consistent_forgery(packaged, tmp_path):
    """A member edited, SHA256SUMS recomputed: the archive agrees with itself
    (plain --verify says OK, as it must), but it is not the published one."""
    import hashlib

    def forge(info, data):
        if info.name.endswith("/NOTICE"):
            data = data + b"\nforged\n"
            info.size = len(data)
        return [(info, data)]
    first = tmp_path / "first.tar.gz"
    _retar(packaged / ARCHIVE, first, forge)
    with tarfile.open(first) as tar:
        notice = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/NOTICE"))).read()
    sha = hashlib.sha256(notice).hexdigest()

    def resum(info, data):
        if info.name.endswith("/SHA256SUMS"):
            data = b"".join(sha.encode() + b"  NOTICE\n" if ln.endswith(b"  NOTICE") else ln + b"\n"
                            for ln in data.splitlines())
            info.size = len(data)
        return [(info, data)]
    forged = tmp_path / ARCHIVE
    _retar(first, forged, resum)
    assert lite_cli("package", "--verify", str(forged)).returncode == 0   # consistent with itself
    published = packaged / (ARCHIVE + ".sha256")
    for trusted in (str(published), published.read_text().split()[0]):
        proc = lite_cli("package", "--verify", str(forged), "--sha256", trusted)
        assert proc.returncode == 5 and "not the published archive" in proc.stderr, proc.stderr
        proc = lite_cli("package", "--verify", str(packaged / ARCHIVE), "--sha256", trusted)   # the control
        assert proc.returncode == 0 and "the one whose sha256 you trust" in proc.stdout, proc.stderr
    proc = lite_cli("package", "--verify", str(forged), "--sha256", "not-a-digest")
    assert proc.returncode == 2 and "64 hex digits" in proc.stderr


def _small_archive(path, members):
    write_archive(str(path), "rel-1", members)


def _retar(src, dst, change):
    """Copy the archive member by member through change(info, data) -> [(info, data)]."""
    out = io.BytesIO()
    with tarfile.open(src) as tar, tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as new:
        for info in tar.getmembers():
            data = tar.extractfile(info).read() if info.isfile() else None
            for i, d in change(info, data):
                new.addfile(i, io.BytesIO(d) if d is not None else None)
    dst.write_bytes(gzip.compress(out.getvalue(), mtime=0))


def _file(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


TAMPERING = {
    "flipped-byte": lambda i, d: [(i, bytes([d[0] ^ 1]) + d[1:]) if i.name.endswith("NOTICE") else (i, d)],
    "missing-member": lambda i, d: [] if i.name.endswith("LICENSE") else [(i, d)],
    "extra-member": lambda i, d: [(i, d)] + ([_file("rel-1/extra.txt", b"x")] if i.name.endswith("NOTICE") else []),
    "traversal": lambda i, d: [(i, d)] + ([_file("rel-1/../../evil.txt", b"x")] if i.name.endswith("NOTICE") else []),
    "absolute": lambda i, d: [(i, d)] + ([_file("/tmp/evil.txt", b"x")] if i.name.endswith("NOTICE") else []),
    "symlink": lambda i, d: [(i, d)] + ([_link("rel-1/link", "/etc/passwd", tarfile.SYMTYPE)]
                                        if i.name.endswith("NOTICE") else []),
    "hardlink": lambda i, d: [(i, d)] + ([_link("rel-1/hard", "rel-1/NOTICE", tarfile.LNKTYPE)]
                                         if i.name.endswith("NOTICE") else []),
    "manifest-disagrees": lambda i, d: [(i, d)],   # built below from a manifest with another sha256
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_verify_catches_tampering(tmp_path, how):
    import hashlib

    notice, xml, weights = b"NOTICE text\n", b"<net/>\n", b"\0" * 64
    def entry(path, data):
        return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = {"files": [entry("openvino/FP32/m.xml", xml), entry("openvino/FP32/m.bin", weights)]}
    if how == "manifest-disagrees":
        manifest["files"][0]["sha256"] = "0" * 64
    members = {"LICENSE": b"licence\n", "NOTICE": notice, "README.md": b"# card\n",
               "MANIFEST.json": json.dumps(manifest).encode(),
               "openvino/FP32/m.xml": xml, "openvino/FP32/m.bin": weights}
    good = tmp_path / "good.tar.gz"
    _small_archive(good, members)
    if how != "manifest-disagrees":   # the control: the untampered archive verifies
        proc = lite_cli("package", "--verify", str(good))
        assert proc.returncode == 0, proc.stderr
    bad = tmp_path / "bad.tar.gz"
    _retar(good, bad, TAMPERING[how])
    proc = lite_cli("package", "--verify", str(bad))
    assert proc.returncode == 5, (how, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_package_refuses_failed_parity_and_manifest_mismatch(lite_release, tmp_path):
    work = linked_build(lite_release, tmp_path / "w", link=("paddle",))
    report = json.loads((work / "parity" / "report.json").read_text())
    report["passed"] = False
    (work / "parity" / "report.json").write_text(json.dumps(report))
    proc = lite_cli("manifest", "--workdir", str(work))   # the manifest now agrees with the failed report
    assert proc.returncode == 0, proc.stderr
    proc = lite_cli("package", "--workdir", str(work), "--output", str(tmp_path / "d1"))
    assert proc.returncode == 10 and "parity" in proc.stderr, proc.stderr
    assert not (tmp_path / "d1" / ARCHIVE).exists()
    report["passed"] = True
    (work / "parity" / "report.json").write_text(json.dumps(report))   # now newer than the manifest
    proc = lite_cli("package", "--workdir", str(work), "--output", str(tmp_path / "d2"))
    assert proc.returncode == 8 and "MANIFEST" in proc.stderr, proc.stderr
    proc = lite_cli("package", "--workdir", str(work), "--output", str(tmp_path / "d3"), "--allow-unverified")
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(tmp_path / "d3" / ARCHIVE) as tar:
        text = tar.extractfile("ocrnet-lite-0.1.0/UNVERIFIED.txt").read().decode()
    assert "MANIFEST" in text


def _model_api(xml, image, out):
    """tests/model_api_client.py in its own process (OpenCV, no paddle)."""
    import subprocess
    import sys

    client = os.path.join(os.path.dirname(__file__), "model_api_client.py")
    return subprocess.run([sys.executable, client, str(xml), str(image), str(out)], capture_output=True, text=True,
                          timeout=600)


def test_model_api_runs_the_packaged_flavour_as_it_is(lite_release, packaged, tmp_path):
    import numpy as np
    from PIL import Image

    # the sample at the build's input size, lossless: neither side resizes or decodes differently
    image = tmp_path / "street_2.png"
    Image.open(SAMPLE).convert("RGB").resize((256, 128), Image.BILINEAR).save(image)
    proc = lite_cli("predict", "--workdir", str(lite_release), "--backend", "openvino-fp32-f32",
                   "--output", str(tmp_path / "ours"), str(image))
    assert proc.returncode == 0, proc.stderr
    ours = np.asarray(Image.open(tmp_path / "ours" / "street_2_classes.png"))
    proc = _model_api(packaged / "model_api" / "FP32" / "ocrnet-lite.xml", image, tmp_path / "mapi.npy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    # model_info picked the wrapper and the labels; the output is scores per class
    assert info == {"wrapper": "SegmentationModel", "labels": ["road", "traffic_light", "bicycle"],
                    "hard": [128, 256], "soft": [128, 256, 19]}
    theirs = np.load(tmp_path / "mapi.npy")
    assert theirs.shape == ours.shape
    assert (theirs == ours).mean() >= 0.9999
    # the control: Model API's map is not trivially equal to anything (it is not constant)
    assert len(np.unique(theirs)) > 3


def test_the_interface_ir_trips_model_api_postprocess(packaged, tmp_path):
    """Why the flavour exists: openvino-model-api 0.4.7 (as every release
    from 0.1.5) loads a 3-D class-map output, then fails in postprocess. If
    a pinned upgrade fixes this, this test says so."""
    from PIL import Image

    image = tmp_path / "s.png"
    Image.open(SAMPLE).convert("RGB").resize((256, 128)).save(image)
    xml = packaged / "ovms" / "models" / "ocrnet-lite-fp32" / "1" / "model.xml"
    proc = _model_api(xml, image, tmp_path / "x.npy")
    assert proc.returncode != 0 and "axis 2 is out of bounds" in proc.stderr, proc.stderr[-2000:]
