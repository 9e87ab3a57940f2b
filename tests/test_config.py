"""Config validation names the offending field."""
import copy

import pytest
import yaml

from converter.config import DEFAULT_CONFIG, load_config, validate
from converter.errors import ConfigError
from tests.support import run_cli


@pytest.fixture
def raw():
    with open(DEFAULT_CONFIG) as fh:
        return yaml.safe_load(fh)


def test_bundled_config_is_valid():
    cfg = load_config()
    assert cfg.checkpoint.size == 425067873
    assert cfg.checkpoint.sha384.startswith("ffe6be29376beefea4a6031e5718f87f")
    assert len(cfg.files) == 4 and cfg.num_classes == 19
    assert cfg.converted_output.name == "argmax_0.tmp_0"


def test_the_old_name_of_the_published_accuracy_still_reads_with_a_notice(raw, capsys):
    """`reference:` became `published_accuracy:` (parity's reference is the Paddle backend); one release of both."""
    assert validate(copy.deepcopy(raw)).published_accuracy["miou"] == 0.821492
    assert capsys.readouterr().err == ""
    old = copy.deepcopy(raw)
    old["reference"] = old.pop("published_accuracy")
    assert validate(old).published_accuracy == validate(copy.deepcopy(raw)).published_accuracy
    assert capsys.readouterr().err.startswith("notice: the config's 'reference' section is now 'published_accuracy'")
    old["reference"]["miou"] = 2.0
    with pytest.raises(ConfigError, match=r"^reference.miou: expected a number in \[0, 1\]"):
        validate(old)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["files"][0].pop("sha384"), "files[0].sha384: missing"),
    (lambda r: r["files"][1].update(sha384="abc"), "files[1].sha384: expected 96 hex digits"),
    (lambda r: r["files"][0].update(size="big"), "files[0].size: expected an integer"),
    (lambda r: r["files"][2].update(source="ftp://x"), "files[2].source: expected an http(s) URL"),
    (lambda r: r["files"][0].update(name="../evil"), "files[0].name: not a plain file name"),
    (lambda r: r["converted"]["input"].update(dtype="float64"), "converted.input.dtype: unsupported 'float64'"),
    (lambda r: r["parity"].update(min_agreement=1.5), "parity.min_agreement"),
    (lambda r: r["published_accuracy"]["per_class_iou"].pop("road"),
     "published_accuracy.per_class_iou: expected one entry for each"),
    (lambda r: r.pop("parity"), "parity: missing"),
])
def test_errors_name_the_field(raw, mutate, message):
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(ConfigError) as err:
        validate(bad)
    assert message in str(err.value)


def test_cli_reports_bad_config_in_one_line(tmp_path, raw):
    raw["files"][0]["size"] = -1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = run_cli("fetch", "--config", str(path), "--output", str(tmp_path / "o"))
    assert proc.returncode == 3
    assert proc.stderr.strip() == "error: files[0].size: must be positive"
