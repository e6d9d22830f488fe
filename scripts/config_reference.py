"""Print docs/config-reference.md: every config key, generated from bncompare/schema.py.

    python scripts/config_reference.py > docs/config-reference.md

The schema is the one source: each key's default, meaning, release and run-id rule come from its
`Option`; what a key accepts is what its own check says when it refuses a value, so the reference
cannot promise a value that `bncompare validate` rejects. tests/test_docs.py fails when the committed
file differs from this script's output (a key added or reworded without regenerating).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the checkout's package, not another installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bncompare.schema import (DEFAULT_VARIANTS, SCHEMA, SECTIONS, STRUCTURE_HELP,  # noqa: E402
                              STRUCTURE_KEYS, Check)

HEADER = """\
# Config reference

Every key a config may set, generated from `bncompare/schema.py` by `python
scripts/config_reference.py > docs/config-reference.md` (do not edit by hand; `tests/test_docs.py`
checks that this file is current). A config names only what differs from the defaults; `--set
KEY=VALUE` overrides any key by its dotted name, and `--sweep KEY=V1,V2` sweeps it. How keys become
runs and run ids: [guide.md](guide.md#configs-runs-and-run-ids).

- **accepts**: what the key's own check accepts (`bncompare validate` refuses anything else, naming
  the file, the line and the key).
- **release**: the release that added the key. A key added after the first release enters the run
  id's hash only when it differs from its default, so older results keep their run ids.
- *Not in the run id*: the key changes how fast a run trains or what else it writes, not what it
  learns, so changing it never retrains finished runs.
"""


class _Probe:
    """A value no check accepts, so that the check's refusal says what it would accept."""

    def __repr__(self) -> str:
        return "<probe>"


def _refusal(check: Check, value: Any) -> str | None:
    try:
        check(value)
    except ValueError as e:
        return str(e)
    return None


def _expected(message: str) -> str:
    """'expected an integer >= 1, got <probe>' -> 'an integer >= 1'."""
    text = message.split("expected ", 1)[1]
    for end in (", got <probe>", "; got <probe>"):
        text = text.split(end, 1)[0]
    return text


def accepts(check: Check) -> str:
    """What `check` accepts, in the words of its own error messages."""
    refusal = _refusal(check, _Probe())
    if refusal is None:  # str(value): any scalar becomes its text
        text = "text"
    else:
        text = _expected(refusal)
        item = _refusal(check, [_Probe()])
        if "list" in text and item is not None and item.startswith("item 1: "):
            text = f"{text}, each {_expected(item[len('item 1: '):])}"
    if _refusal(check, None) is None and "null" not in text:
        text += ", or null"
    return text


def _value(value: Any) -> str:
    """A default as YAML's flow style would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value).replace('"', "")
    return str(value)


def _cell(text: str) -> str:
    """Text as one table cell: a pipe would end the cell, and <out> would read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def _row(key: str, default: Any, what: str, release: int, meaning: str) -> str:
    return f"| `{key}` | `{_cell(_value(default))}` | {_cell(what)} | {release} | {_cell(meaning)} |"


def render() -> str:
    sections: dict[str, list[str]] = {"Top level": [], **{f"`{name}`": [] for name in SECTIONS}}
    for key, option in SCHEMA.items():
        section = key.rpartition(".")[0]
        meaning = option.help if option.in_run_id else f"{option.help}. *Not in the run id*"
        sections[f"`{section}`" if section else "Top level"].append(
            _row(key, option.default, accepts(option.check), option.added, meaning))
    # variants and sweep are not options: their help lives beside STRUCTURE_KEYS; both are as old as
    # the first release.
    defaults = {"variants": DEFAULT_VARIANTS, "sweep": {}}
    sections["`variants` and `sweep`"] = [_row(key, defaults[key], *STRUCTURE_HELP[key][:1], 1,
                                               STRUCTURE_HELP[key][1]) for key in STRUCTURE_KEYS]
    out = [HEADER]
    for title, rows in sections.items():
        out += [f"## {title}", "", "| key | default | accepts | release | meaning |",
                "| --- | --- | --- | --- | --- |", *rows, ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
