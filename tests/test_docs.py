"""The docs a user reads stay true to the code: the config reference is the schema's, the README stays
short, and no link in README.md or docs/ leads nowhere. No training: a fraction of a second."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _reference_generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_current():
    committed = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert committed == _reference_generator().render(), (
        "docs/config-reference.md is out of date: python scripts/config_reference.py > docs/config-reference.md")


def test_config_reference_lists_every_key_with_what_it_accepts():
    from bncompare.schema import SCHEMA, STRUCTURE_KEYS

    generator = _reference_generator()
    text = generator.render()
    for key in [*SCHEMA, *STRUCTURE_KEYS]:
        assert f"| `{key}` |" in text, key
    # What a key accepts is its check's own wording, so it follows the check's bounds.
    assert generator.accepts(SCHEMA["model.depth"].check).startswith("an integer from 1 to ")
    assert generator.accepts(SCHEMA["data.train_limit"].check) == "an integer >= 1, or null"
    assert generator.accepts(SCHEMA["record.bn_eval"].check) == (
        "a non-empty list, each one of moving, precise, batch")


def test_readme_is_at_most_250_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move detail into docs/guide.md"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: Counter[str] = Counter()
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        out.add(base if not seen[base] else f"{base}-{seen[base]}")  # repeated headings: -1, -2...
        seen[base] += 1
    return out


def links_in(text: str) -> list[str]:
    """The relative link targets of Markdown text, leaving out code and URLs with a scheme."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def links(path: Path) -> list[str]:
    return links_in(path.read_text(encoding="utf-8"))


def test_slug_follows_github():
    assert slug("Ioffe & Szegedy 2015, Figure 1 — holds (effect early on)") == (
        "ioffe--szegedy-2015-figure-1--holds-effect-early-on")
    assert slug("Every eval point in pandas: `bncompare export` and `bncompare.load`") == (
        "every-eval-point-in-pandas-bncompare-export-and-bncompareload")
    assert links_in("see [a](b.md#c) and `[not](a link)` and ![x](y.png) and [web](https://x.org)") == [
        "b.md#c", "y.png"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading with that anchor in {path.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def tables(text: str) -> list[list[str]]:
    """Each Markdown table of `text` (outside code blocks) as its lines."""
    out: list[list[str]] = []
    previous_was_row = False
    for line in FENCE.sub("", text).split("\n"):
        row = line.startswith("|")
        if row and not previous_was_row:
            out.append([])
        if row:
            out[-1].append(line)
        previous_was_row = row
    return out


def cells(row: str) -> int:
    return len(re.split(r"(?<!\\)\|", row.strip().strip("|")))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_row_has_its_header_s_cells(doc):
    """A stray pipe in a cell shifts the rest of its row under the wrong header."""
    for table in tables(doc.read_text(encoding="utf-8")):
        header = cells(table[0])
        assert re.fullmatch(r"\|( *:?-+:? *\|)+", table[1].strip()), table[1]
        for row in table[1:]:
            assert cells(row) == header, f"{doc.relative_to(ROOT)}: {row[:80]}"
