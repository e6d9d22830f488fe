"""Config loading, overrides, expansion, run ids, and every error path (no training here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bncompare.config import ConfigError, config_hash, load_experiment, load_runs
from bncompare.schema import SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_runs([path], overrides)
    return str(info.value)


# ---- defaults and the origin config --------------------------------------------------------------


def test_empty_config_gives_every_default_and_the_two_default_variants(tmp_path):
    runs = load_runs([write(tmp_path, "")])
    assert [r.variant for r in runs] == ["no_bn", "bn"]
    assert runs[0].experiment == "exp"  # the file's name
    for key, option in SCHEMA.items():
        if key not in ("name", "train.seeds", "model.batch_norm"):
            assert runs[0].params[key] == option.default, key
    assert [r.params["model.batch_norm"] for r in runs] == [False, True]
    assert runs[0].params["train.seed"] == 0 and "train.seeds" not in runs[0].params


def test_origin_config_expands_to_the_notebooks_two_models():
    runs = load_runs([ROOT / "configs" / "mnist.yaml"])
    assert [r.variant for r in runs] == ["no_bn", "bn"]
    for run in runs:
        assert run.experiment == "mnist"
        assert run.params["model.hidden"] == [256, 128]
        assert (run["train.optimizer"], run["train.learning_rate"], run["train.batch_size"],
                run["train.epochs"], run["data.validation"]) == ("adam", 0.001, 32, 5, "test")


# ---- expansion and run ids -------------------------------------------------------------------------


SWEEP = """\
name: lr
train: {seeds: [0, 1]}
sweep:
  train.learning_rate: [0.001, 0.01, 0.1]
"""


def test_variants_times_sweep_times_seeds(tmp_path):
    runs = load_runs([write(tmp_path, SWEEP)])
    assert len(runs) == 2 * 3 * 2
    assert len({r.run_id for r in runs}) == 12
    combos = {(r.variant, r["train.learning_rate"], r.seed) for r in runs}
    assert len(combos) == 12
    run = next(r for r in runs if r.variant == "bn" and r["train.learning_rate"] == 0.01 and r.seed == 0)
    assert re.fullmatch(r"bn-lr0\.01-s0-[0-9a-f]{6}", run.run_id)


def test_run_ids_are_stable_and_follow_the_resolved_config(tmp_path):
    first = [r.run_id for r in load_runs([write(tmp_path, SWEEP)])]
    assert first == [r.run_id for r in load_runs([write(tmp_path, SWEEP)])]
    changed = [r.run_id for r in load_runs([write(tmp_path, SWEEP + "model: {depth: 3}\n")])]
    assert not set(first) & set(changed)
    # The same value written differently is the same config: 0.1 == 1e-1 == 1.0e-1.
    assert first == [r.run_id for r in load_runs([write(tmp_path, SWEEP.replace("0.1]", "1.0e-1]"))])]


def test_speed_only_keys_stay_out_of_the_run_id(tmp_path):
    base = load_runs([write(tmp_path, "")])[0]
    traced = load_runs([write(tmp_path, "record: {tensorboard: true}\n")])[0]
    assert traced.params["record.tensorboard"] is True
    assert config_hash(base.params) == config_hash(traced.params)


def test_resolved_run_config_reproduces_the_run(tmp_path):
    run = next(r for r in load_runs([write(tmp_path, SWEEP)]) if r.variant == "bn")
    again = load_runs([write(tmp_path, yaml.safe_dump(run.to_config()), "again.yaml")])
    assert len(again) == 1
    assert again[0].params == run.params
    assert again[0].run_id.endswith(run.run_id[-6:])


def test_steps_override_epochs(tmp_path):
    run = load_runs([write(tmp_path, "train: {steps: 100}\n")])[0]
    assert run["train.steps"] == 100 and run["train.epochs"] is None


def test_nested_and_dotted_variant_overrides_are_the_same(tmp_path):
    nested = load_runs([write(tmp_path, "variants: {bn: {model: {batch_norm: true}}}\n")])
    dotted = load_runs([write(tmp_path, "variants: {bn: {model.batch_norm: true}}\n")])
    assert [r.run_id for r in nested] == [r.run_id for r in dotted]


def test_no_variants_gives_one_base_variant(tmp_path):
    runs = load_runs([write(tmp_path, "variants: {}\n")])
    assert [r.variant for r in runs] == ["base"]


def test_duplicate_runs_across_files_are_trained_once(tmp_path):
    path = write(tmp_path, SWEEP)
    assert len(load_runs([path, path])) == 12


# ---- --set -----------------------------------------------------------------------------------------


def test_set_reads_values_as_yaml_and_names_them_in_the_run_id(tmp_path):
    runs = load_runs([write(tmp_path, "")], ["train.learning_rate=1e-2", "model.hidden=[64, 32]",
                                             "train.seeds=[3, 4]"])
    assert {r["train.learning_rate"] for r in runs} == {0.01}
    assert {tuple(r["model.hidden"]) for r in runs} == {(64, 32)}
    assert sorted({r.seed for r in runs}) == [3, 4]
    assert runs[0].run_id.startswith("no_bn-lr0.01-hidden64x32-s3-")


def test_set_wins_over_variants_and_replaces_a_sweep_axis(tmp_path):
    runs = load_runs([write(tmp_path, SWEEP)], ["train.learning_rate=0.5", "model.dropout=0.1"])
    assert len(runs) == 2 * 2  # the learning-rate axis is gone
    assert {r["train.learning_rate"] for r in runs} == {0.5}
    assert all(r["model.dropout"] == 0.1 for r in runs)
    variants = write(tmp_path, "variants: {a: {model.dropout: 0.2, model.width: 8}, b: {model.dropout: 0.3}}\n")
    runs = load_runs([variants], ["model.dropout=0.1"])
    assert [(r.variant, r["model.dropout"], r["model.width"]) for r in runs] == [("a", 0.1, 8), ("b", 0.1, 128)]


def test_set_can_add_sweeps_and_edit_variants(tmp_path):
    runs = load_runs([write(tmp_path, "")], ["sweep.model.depth=[1, 3]",
                                             "variants.bn.model.bn_momentum=0.9"])
    assert len(runs) == 4
    assert {r["model.bn_momentum"] for r in runs if r.variant == "bn"} == {0.9}
    assert {r["model.bn_momentum"] for r in runs if r.variant == "no_bn"} == {0.99}


# ---- errors: one line, file:line, the key ----------------------------------------------------------


@pytest.mark.parametrize("text, line, expected", [
    ("model:\n  dept: 3\n", 2, "model.dept: unknown key (did you mean model.depth?)"),
    ("modle:\n  depth: 3\n", 1, "modle: unknown key (did you mean model?)"),
    ("model:\n  depth: two\n", 2, "model.depth: expected an integer from 1 to 256, got 'two'"),
    ("model:\n  depth: 0\n", 2, "model.depth: expected an integer from 1 to 256, got 0"),
    ("model:\n  batch_norm: 1\n", 2, "model.batch_norm: expected true or false, got 1"),
    ("train:\n  learning_rate: -0.1\n", 2, "train.learning_rate: expected a number > 0, got -0.1"),
    ("data:\n  dataset: imagenet\n", 2, "data.dataset: expected one of mnist, fashion_mnist"),
    ("model:\n  activation: swishy\n", 2, "model.activation: expected one of relu"),
    ("train:\n  optimizer: lbfgs\n", 2, "train.optimizer: expected one of sgd, momentum, adam, rmsprop"),
    ("model:\n  init: kaiming\n", 2, "model.init: unknown initializer 'kaiming'"),
    ("model:\n  init: {name: random_normal, sigma: 1}\n", 2, "initializer 'random_normal' takes mean, stddev"),
    ("data:\n  validation: 1.5\n", 2, "data.validation: expected 'test' or a fraction between 0 and 1"),
    ("sweep:\n  train.learnin_rate: [0.1]\n", 2, "sweep.train.learnin_rate: unknown key (did you mean train.learning_rate?)"),
    ("sweep:\n  train.learning_rate: 0.1\n", 2, "expected a non-empty list of values to sweep"),
    ("sweep:\n  train.learning_rate: [0.1, 1e-1]\n", 2, "a value is listed twice"),
    ("sweep:\n  train.seeds: [[0], [1]]\n", 2, "cannot be swept (list the seeds in train.seeds)"),
    ("variants:\n  bn:\n    model.batchnorm: true\n", 3, "variants.bn.model.batchnorm: unknown key"),
    ("variants:\n  bn-big: {}\n", 2, "variant names may use letters, digits, _ and . only"),
    ("variants:\n  bn: {train.learning_rate: 0.1}\nsweep:\n  train.learning_rate: [0.1, 1]\n", 2,
     "variants.bn.train.learning_rate: also swept"),
    ("data:\n  train_limit: 70000\n", 2, "data.train_limit: 70000 is more than the 60000 training examples mnist has"),
    ("model:\n  depth: 2\n  depth: 3\n", 3, "model.depth: key given twice"),
    ("model: [1, 2\n", 2, "invalid YAML"),
    ("name: my results\n", 1, "name: use letters, digits"),
])
def test_errors_name_the_file_line_and_key(tmp_path, text, line, expected):
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}:{line}: "), message
    assert expected in message
    assert "\n" not in message


def test_a_top_level_list_is_an_error(tmp_path):
    assert "expected a mapping" in error_of(write(tmp_path, "- 1\n- 2\n"))


def test_yaml_one_point_one_exponents_are_numbers(tmp_path):
    # PyYAML reads `1e-3` as a string; users mean the number.
    assert load_runs([write(tmp_path, "train: {learning_rate: 1e-3}\n")])[0]["train.learning_rate"] == 0.001


@pytest.mark.parametrize("override, expected", [
    ("train.learning_rate", "--set train.learning_rate: expected KEY=VALUE"),
    ("train.learing_rate=0.1", "--set train.learing_rate=0.1: unknown key (did you mean train.learning_rate?)"),
    ("model.depth=0", "--set model.depth=0: expected an integer from 1 to 256, got 0"),
    ("model=3", "--set model=3: name one key, e.g. --set model.kind=..."),
    ("sweep.model.depth=3", "expected a non-empty list of values to sweep"),
    ("train.learning_rate=[0.1", "the value is not valid YAML"),
])
def test_override_errors(tmp_path, override, expected):
    message = error_of(write(tmp_path, ""), [override])
    assert expected in message


def test_every_default_passes_its_own_check():
    for key, option in SCHEMA.items():
        assert option.check(option.default) == option.default, key


def test_load_experiment_reports_the_name_and_source(tmp_path):
    experiment = load_experiment(write(tmp_path, "name: study\nsweep: {model.depth: [1, 2]}\n"))
    assert experiment.name == "study" and experiment.sweep == {"model.depth": [1, 2]}


def test_readme_documents_every_config_key():
    """The README's list of keys is what users read: it must not drift from the schema."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("All keys, with their defaults"):]
    block = block[:block.index("```\n", block.index("```yaml") + 7)]
    for key in SCHEMA:
        section, _, option = key.rpartition(".")
        assert re.search(rf"^{'  ' if section else ''}{option}:", block, re.M), f"{key} is not in README"
