"""Config loading, overrides, expansion, run ids, and every error path (no training here)."""

from __future__ import annotations

import os
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
    runs = load_runs([write(tmp_path, "{}\n")])
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
    base = load_runs([write(tmp_path, "{}\n")])[0]
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


# ---- hardening: silent no-ops, paths, hostile input, bounds (issues 16 and 17) -------------------

ORIGIN = ROOT / "configs" / "mnist.yaml"


@pytest.mark.parametrize("override, decider", [
    ("model.depth=4", "model.hidden = [256, 128]"),
    ("model.width=64", "model.hidden = [256, 128]"),
    ("train.momentum=0.5", 'train.optimizer = "adam"'),
])
def test_a_set_key_that_another_key_overrides_is_an_error(override, decider):
    message = error_of(ORIGIN, [override])
    assert message.startswith(f"--set {override}: has no effect: {decider} ({ORIGIN}:"), message


def test_no_op_keys_in_files_variants_and_sweeps_name_both_lines(tmp_path):
    path = write(tmp_path, "model: {hidden: [8]}\nvariants: {deep: {model.depth: 4}}\n")
    assert error_of(path) == (f"{path}:2: variants.deep.model.depth: has no effect: model.hidden = [8] "
                              f"({path}:1), which gives the layer sizes; change model.hidden (or "
                              f"set it to null)")
    path = write(tmp_path, "model: {hidden: [8]}\nsweep: {model.width: [4, 8]}\n")
    assert "sweep.model.width: has no effect: model.hidden" in error_of(path)
    assert "--set train.epochs=3: has no effect: train.steps = 10 (--set train.steps=10)" in error_of(
        write(tmp_path, ""), ["train.steps=10", "train.epochs=3"])
    assert "train.momentum: has no effect: train.optimizer" in error_of(
        write(tmp_path, "train: {momentum: 0.5}\n"))


def test_overriding_a_key_on_purpose_is_not_a_no_op(tmp_path):
    # The command line's steps replace the file's epochs; the file's hidden replaces its depth
    # (every run's resolved config.yaml has both); a key used by some runs is not a no-op.
    assert load_runs([ORIGIN], ["train.steps=10"])[0]["train.epochs"] is None
    assert load_runs([write(tmp_path, "model: {depth: 3, hidden: [8]}\n")])
    assert load_runs([write(tmp_path, "train: {momentum: 0.5}\nsweep: {train.optimizer: [sgd, momentum]}\n")])
    assert load_runs([ORIGIN], ["model.hidden=null", "model.depth=4"])[0]["model.depth"] == 4
    assert load_runs([ORIGIN], ["train.epochs=2", "train.steps=10"])[0]["train.epochs"] is None


def test_two_variants_resolving_to_one_config_are_an_error():
    message = error_of(ORIGIN, ["model.batch_norm=true"])
    assert "runs no_bn-bn-s0-56a614 and bn-bn-s0-56a614 are the same config" in message
    assert f"--set model.batch_norm=true replaces what {ORIGIN}:22: variants.no_bn.model.batch_norm sets" in message


def test_sweep_points_resolving_to_one_config_are_an_error(tmp_path):
    message = error_of(write(tmp_path, "sweep: {train.pack: [auto, 'off']}\n"))
    assert "are the same config" in message and "do not change what a run learns" in message
    same = write(tmp_path, "variants: {a: {model.dropout: 0.1}, b: {model.dropout: 0.1}}\n")
    assert "variants a and b set the same values" in error_of(same)


@pytest.mark.parametrize("text, expected", [
    ('name: ".."\n', "name: use letters"),
    ('name: "."\n', "name: use letters"),
    ('name: .hidden\n', "not starting with a dot"),
    ('name: "a\\n"\n', "name: use letters"),
    ('name: "a/b"\n', "name: use letters"),
    (f'name: {"x" * 121}\n', "name: at most 120 characters"),
    ('variants: {"..": {}}\n', "variant names may use letters, digits, _ and . only, and not start with a dot"),
    ('variants: {".": {}}\n', "not start with a dot"),
    ('variants: {".bn": {}}\n', "not start with a dot"),
    ('variants: {"a\\n": {}}\n', "variant names may use"),
    (f'variants: {{{"v" * 61}: {{}}}}\n', "variant names have at most 60 characters"),
])
def test_names_that_would_escape_or_break_a_path_are_errors(tmp_path, text, expected):
    assert expected in error_of(write(tmp_path, text))


def test_a_file_named_dot_dot_yaml_needs_a_name(tmp_path):
    assert "name (the file's name): use letters" in error_of(write(tmp_path, "{}\n", "...yaml"))
    assert load_runs([write(tmp_path, "name: ok\n", "...yaml")])[0].experiment == "ok"


def test_run_ids_longer_than_a_directory_name_may_be_are_errors(tmp_path):
    message = error_of(write(tmp_path, f"model: {{hidden: [{', '.join(['1000'] * 40)}]}}\n"),
                       ["model.hidden=" + "[" + ", ".join(["1000"] * 40) + "]"])
    assert "characters; at most 120 (it names a directory)" in message


def test_a_key_given_nested_and_dotted_is_an_error(tmp_path):
    path = write(tmp_path, "model: {hidden: [8]}\nmodel.hidden: [4]\n")
    assert error_of(path) == f"{path}:2: model.hidden: given twice (also as {path}:1: model.hidden)"
    path = write(tmp_path, "variants:\n  bn: {model.batch_norm: true, model: {batch_norm: false}}\n")
    assert "variants.bn.model.batch_norm: given twice" in error_of(path)


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, expected", [
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 32 levels deep"),
    ("a: " + "[" * 40 + "]" * 40 + "\n", "nested more than 32 levels deep"),
    ("a: &a [*a]\n", "a: an alias refers to itself"),
    ("a: &a {b: *a}\n", "an alias refers to itself"),
    (BILLION_LAUGHS, "expands to more than 100,000 values"),
    ("train: {seeds: [" + "1" * 5000 + "]}\n", "train.seeds: a number of 5,000 digits"),
    ("train: {learning_rate: 1" + "0" * 400 + "}\n", "train.learning_rate: a number of 401 digits"),
    ("train: {learning_rate: 1e400}\n", "train.learning_rate: expected a number > 0, got inf"),
])
def test_hostile_yaml_is_a_clean_config_error(tmp_path, text, expected):
    assert expected in error_of(write(tmp_path, text))


def test_a_huge_or_special_config_file_is_refused_unread(tmp_path):
    big = write(tmp_path, "# " + "x" * 1_000_001 + "\n")
    assert "more than 1,000,000 characters" in error_of(big)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert error_of(fifo) == f"{fifo}: not a regular file"  # reading it would wait forever


@pytest.mark.parametrize("override, expected", [
    ("train.seeds=[" + "9" * 5000 + "]", "a number of 5,000 digits is not a config value"),
    ("train.learning_rate=" + "1" + "0" * 400, "a number of 401 digits is not a config value"),
    ("model.dropout=1e400", "expected a number >= 0 and < 1, got inf"),
    ("train.seeds=[4294967296]", "expected an integer from 0 to 4,294,967,295, got 4294967296"),
])
def test_hostile_set_values_are_clean_errors(tmp_path, override, expected):
    message = error_of(write(tmp_path, ""), [override])
    assert expected in message and len(message) < 300


@pytest.mark.parametrize("text, expected", [
    ("train: {seeds: [4294967296]}\n", "expected an integer from 0 to 4,294,967,295"),
    ("model: {depth: 1000}\n", "model.depth: expected an integer from 1 to 256, got 1000"),
    ("model: {hidden: [" + ", ".join(["8"] * 257) + "]}\n", "a list of at most 256 items"),
    ("model: {width: 1000000}\n", "model.width: expected an integer from 1 to 100,000"),
    ("train: {steps: 1000000000000}\n", "train.steps: expected an integer from 1 to 100,000,000"),
    ("train: {epochs: 1.0e+9}\n", "train.epochs: expected an integer from 1 to 100,000,000"),
    ("train: {epochs: 100000, batch_size: 1}\n", "train.epochs: 6,000,000,000 optimizer steps; at most 100,000,000"),
    ("model: {init: {name: variance_scaling, scale: 0}}\n", "scale: expected a number > 0, got 0"),
    ("model: {init: {name: variance_scaling, mode: fan_out_typo}}\n", "mode: expected one of fan_in, fan_out, fan_avg"),
    ("model: {init: {name: variance_scaling, distribution: gauss}}\n", "distribution: expected one of"),
    ("model: {init: {name: random_normal, stddev: -1}}\n", "stddev: expected a number >= 0, got -1"),
    ("model: {init: {name: random_uniform, minval: 1, maxval: 0}}\n", "minval must be below maxval"),
    ("data: {dataset: synthetic, validation: 0.0002}\n", "leaves no validation examples"),
    ("data: {validation: 0.999999}\n", "leaves no training examples"),
    ("data: {dataset: synthetic, validation: 0.5, train_limit: 1001}\n",
     "data.train_limit: 1001 is more than the 1000 training examples synthetic has"),
])
def test_values_that_can_only_fail_in_training_fail_in_validate(tmp_path, text, expected):
    assert expected in error_of(write(tmp_path, text))


def test_integers_too_big_for_a_float_are_a_check_error_not_an_overflow():
    for key in ("train.learning_rate", "model.dropout", "data.validation"):
        with pytest.raises(ValueError, match="got a number of 401 digits"):
            SCHEMA[key].check(10**400)


def test_keras_accepted_initializer_arguments_pass(tmp_path):
    text = "model: {init: {name: variance_scaling, scale: 2.0, mode: fan_out, distribution: uniform}}\n"
    assert load_runs([write(tmp_path, text)])[0]["model.init"]["mode"] == "fan_out"


def test_the_number_of_runs_is_bounded_before_expanding(tmp_path):
    values = ", ".join(str(v) for v in range(1, 101))
    text = f"sweep: {{model.width: [{values}], train.batch_size: [{values}], model.depth: [{values}]}}\n"
    assert "expands to 2,000,000 runs (variants x sweep values x seeds); at most 100,000" in error_of(
        write(tmp_path, text))


@pytest.mark.parametrize("short, real", [("train.lr", "train.learning_rate"),
                                         ("train.bs", "train.batch_size"),
                                         ("model.bn", "model.batch_norm")])
def test_short_names_from_run_ids_suggest_the_real_key(tmp_path, short, real):
    message = error_of(write(tmp_path, ""), [f"{short}=1"])
    assert f"unknown key (did you mean {real}? {short.split('.')[1]} is its short name in run ids)" in message
    assert f"did you mean {real}?" in error_of(write(tmp_path, f"{short}: 1\n"))


def test_a_none_value_reads_as_no_in_run_ids():
    run = load_runs([ROOT / "configs" / "depth.yaml"], ["model.hidden=null"])[0]
    assert "-nohidden-" in run.run_id and "None" not in run.run_id
