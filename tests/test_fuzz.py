"""Fuzzed configs, --set and --where values: `validate` answers 0 or 2, never a traceback, and a
config that `validate` rejects makes `run` write nothing (issues 16 and 17); `summary --where`
answers 0 or 2 whatever the value (issue 20)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from results_fixtures import sweep_results
from typer.testing import CliRunner

from bncompare.cli import app
from bncompare.schema import SCHEMA, SECTIONS

runner = CliRunner()

KEYS = st.one_of(
    st.sampled_from(sorted(SCHEMA) + list(SECTIONS) + ["variants", "sweep", "name", "train.lr",
                                                        "model.bn", "variants.bn", "sweep.model.depth"]),
    st.text(min_size=1, max_size=12))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10, max_value=300),
    st.integers(min_value=-(10**40), max_value=10**40), st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["test", "epoch", "auto", "off", "mnist", "synthetic", "relu", "adam", "momentum",
                     "random_normal", "variance_scaling", "..", ".", "a\n", "\x1b[2J"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)
SECTION_VALUES = st.dictionaries(st.sampled_from(sorted({k.split(".", 1)[1] for k in SCHEMA if "." in k})),
                                 VALUES, max_size=4)
CONFIGS = st.dictionaries(st.one_of(st.sampled_from(SECTIONS), KEYS),
                          st.one_of(SECTION_VALUES, VALUES), max_size=5)
# Tags whose content PyYAML cannot convert, and hostile YAML that must stay cheap (issue 20).
TAGGED = st.one_of(
    st.tuples(st.sampled_from(["!!int", "!!float", "!!bool", "!!timestamp", "!!str", "!!null"]),
              st.text(alphabet="abc019-:. ", max_size=12)).map(" ".join),
    st.sampled_from(["2001-13-45", "!!int", "!!timestamp", "&a [*a]", "[" * 40, "1" + "0" * 400, "9" * 500,
                     "[&a0 [x,x,x,x,x,x,x,x,x], " + ", ".join(
                         f"&a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)) + "]"]))
RAW_TEXT = st.one_of(
    CONFIGS.map(lambda config: yaml.safe_dump(config, allow_unicode=True)),
    st.text(max_size=200),
    st.sampled_from(["a: &a [*a]\n", "x: " + "[" * 50 + "]" * 50, "train: {seeds: [" + "9" * 5000 + "]}",
                     "model: {hidden: [8]}\nmodel.hidden: [4]\n", "name: ..\n", "- 1\n"]),
    st.tuples(st.sampled_from(sorted(SCHEMA)), TAGGED).map(
        lambda kv: f"{kv[0].split('.')[0]}:\n  {kv[0].split('.')[-1]}: {kv[1]}\n"))
SET_VALUES = st.lists(st.tuples(KEYS, st.one_of(
    VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()),
    st.text(max_size=20), TAGGED)).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=3)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(text=RAW_TEXT, overrides=SET_VALUES)
def test_validate_exits_0_or_2_and_a_rejected_config_writes_nothing(tmp_path: Path, text: str,
                                                                     overrides: list[str]) -> None:
    config = tmp_path / "fuzz.yaml"
    config.write_text(text, encoding="utf-8", errors="surrogatepass")
    args = [str(config)] + [a for o in overrides for a in ("--set", o)]
    result = runner.invoke(app, ["validate", *args])
    assert result.exit_code in (0, 2), (text, overrides, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        text, overrides, repr(result.exception))
    if result.exit_code == 2:
        out = tmp_path / "out"
        refused = runner.invoke(app, ["run", *args, "--out", str(out)])
        assert refused.exit_code == 2 and not out.exists(), refused.output
        assert "Traceback" not in result.output and "\x1b" not in result.output


@settings(max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(key=st.one_of(st.sampled_from(["learning_rate", "train.learning_rate", "variant", "seed"]),
                     KEYS),
       value=st.one_of(TAGGED, st.text(max_size=20),
                       VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())))
def test_where_answers_0_or_2_whatever_the_value(where_results: Path, key: str, value: str) -> None:
    result = runner.invoke(app, ["summary", str(where_results), "--where", f"{key}={value}"])
    assert result.exit_code in (0, 2), (key, value, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        key, value, repr(result.exception))


@pytest.fixture(scope="module")
def where_results(tmp_path_factory) -> Path:
    return sweep_results(tmp_path_factory.mktemp("where"))
