"""The documentation holds together: the README is short, every page under
docs/ is reachable from it, every relative link and anchor resolves, and
every section of the old single-file README has a home."""
import os
import re

import pytest

from tests.support import ROOT

# the headings of the README before it was split (issue 28), each now a heading of a page under docs/
OLD_SECTIONS = ["What you get", "The config drives the conversion", "Backends", "Source layout", "Weights",
                "Sample images", "Your own model", "Model interfaces", "CLI reference", "Parity",
                "Quantization (INT8)", "Packaging", "predict and evaluate", "Validation at scale (validate)",
                "diagnose: where a converted model starts to disagree", "fetch, the cache and offline use",
                "Artifact layout", "Reproducible builds, incremental stages", "Benchmark", "Development",
                "Test tiers"]


def anchor(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(text):
    text = re.sub(r"```.*?```", "", text, flags=re.S)   # a '#' in a code block is a comment
    return [m.group(2) for m in re.finditer(r"^(#+) (.+)$", text, flags=re.M)]


def link_problems(root):
    """Every relative Markdown link of README.md and docs/*.md whose file or anchor does not exist."""
    pages = ["README.md"] + [os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(root, "docs")))]
    problems = []
    for page in pages:
        text = open(os.path.join(root, page), encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, fragment = target.partition("#")
            file = os.path.normpath(os.path.join(root, os.path.dirname(page), path)) if path else \
                os.path.join(root, page)
            if not os.path.exists(file):
                problems.append(f"{page}: {target}: no such file")
            elif fragment and file.endswith(".md"):
                if fragment not in {anchor(h) for h in headings(open(file, encoding="utf-8").read())}:
                    problems.append(f"{page}: {target}: no such heading")
    return problems


def test_the_readme_is_short_and_reaches_every_page():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert 150 <= len(readme.splitlines()) <= 300
    assert "## Contents" in readme
    for name in os.listdir(os.path.join(ROOT, "docs")):
        assert f"(docs/{name})" in readme, f"docs/{name} is not linked from the README"


def test_every_section_of_the_old_readme_has_a_home():
    found = set()
    for name in os.listdir(os.path.join(ROOT, "docs")):
        found |= set(headings(open(os.path.join(ROOT, "docs", name), encoding="utf-8").read()))
    assert [s for s in OLD_SECTIONS if s not in found] == []


def test_every_relative_link_resolves():
    assert link_problems(ROOT) == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    """Negative control: a missing page and a missing heading."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Its part\n\n[back](../README.md#contents)\n")
    (tmp_path / "README.md").write_text("## Contents\n\n[a](docs/a.md#its-part) [b](docs/b.md) "
                                        "[c](docs/a.md#no-part)\n")
    assert link_problems(str(tmp_path)) == ["README.md: docs/b.md: no such file",
                                            "README.md: docs/a.md#no-part: no such heading"]


@pytest.mark.parametrize("heading, expected", [("Benchmark tables (Zen 4 and Zen 3)", "benchmark-tables-zen-4-and-zen-3"),
                                               ("CLI reference", "cli-reference"),
                                               ("fetch, the cache and offline use", "fetch-the-cache-and-offline-use")])
def test_anchors_follow_githubs_rule(heading, expected):
    assert anchor(heading) == expected
