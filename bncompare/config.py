"""Experiment configs: YAML loading with line numbers, --set overrides, expansion into runs.

An experiment (one YAML file) expands into runs: every variant x every combination of swept values
x every seed. Each run is a flat dict of dotted keys (``params``) plus a readable, unique run id
whose hash part is a digest of those params, so the same resolved config always gets the same id.

Precedence, lowest first: schema defaults, the file's keys, the variant's overrides, the swept
value, ``--set``. A ``--set`` of a swept key replaces that sweep axis with the one value.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from bncompare.callables import KEYS as FUNCTION_KEYS
from bncompare.callables import fingerprint, function_name, is_reference
from bncompare.schema import (DEFAULT_VARIANTS, MAX_STEPS, MODEL_KINDS, SCHEMA, SECTIONS,
                              STRUCTURE_KEYS, short_integer)

# Training examples per dataset, so that an impossible train_limit is caught before any data loads.
TRAIN_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000, "synthetic": 2_000}
VARIANT_NAME = re.compile(r"[A-Za-z0-9_.]+")  # use with fullmatch: `$` matches before a final newline
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# Keys that make no sense to vary per variant or sweep: seeds are their own axis.
NOT_VARIABLE = ("name", "train.seeds")


class ConfigError(ValueError):
    """A problem with a config, already phrased for the user as `file:line: key: what is wrong`."""


@dataclass(frozen=True)
class Run:
    """One training run: a fully resolved config."""

    experiment: str
    variant: str
    run_id: str
    params: dict[str, Any]  # flat dotted keys; `train.seed` instead of `train.seeds`
    source: str = ""

    @property
    def seed(self) -> int:
        return self.params["train.seed"]

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    def to_config(self) -> dict[str, Any]:
        """The run as a config file that reproduces exactly this run."""
        nested: dict[str, Any] = {"name": self.experiment}
        for key, value in self.params.items():
            section, option = key.split(".", 1)
            if key == "train.seed":
                option, value = "seeds", [value]
            nested.setdefault(section, {})[option] = value
        nested["variants"] = {self.variant: {}}
        return nested


@dataclass
class Experiment:
    """A parsed, validated config file (plus command-line overrides), before expansion."""

    name: str
    source: str
    base: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    sweep: dict[str, list[Any]]
    set_keys: list[str] = field(default_factory=list)
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)
    # Where each given value came from, as the `file:line: key` (or `--set ...`) error prefix:
    # ("base", key), ("variant", name, key), ("sweep", key), ("set", key).
    origins: dict[tuple[str, ...], str] = field(default_factory=dict)


# ---- YAML with line numbers -------------------------------------------------------------------

# Bounds on what a config file may be, so that a hostile or broken file fails in a second with a
# one-line error instead of a traceback or an out-of-memory kill. Real configs are a few hundred
# bytes, a few dozen values and 3 levels deep.
MAX_CONFIG_BYTES = 1_000_000
MAX_VALUES = 100_000  # YAML nodes once aliases are expanded ("billion laughs": 861 bytes, 4 GB)
MAX_NESTING = 32
MAX_DIGITS = 30  # integers longer than this are typos; Python refuses to read 4,300 digits anyway
MAX_RUNS = 100_000  # runs one config may expand to
MAX_NAME = 120  # characters in an experiment name, a variant name or a run id (one path component)
INT_TAG = "tag:yaml.org,2002:int"
# Scalars that PyYAML converts with int(), float(), a lookup or datetime(): `!!int abc`, `!!bool
# maybe`, `2001-13-45` (a timestamp by its form), an empty `!!timestamp` raise ValueError, KeyError
# or AttributeError from deep inside it.
CONVERTED_TAGS = tuple(f"tag:yaml.org,2002:{name}" for name in ("int", "float", "bool", "timestamp"))
CONVERT_ERRORS = (ValueError, KeyError, IndexError, TypeError, OverflowError, AttributeError)


def _check_scalar(loader: yaml.SafeLoader, node: yaml.ScalarNode, where: str) -> None:
    """Raise ConfigError when PyYAML cannot convert a tagged scalar (see CONVERTED_TAGS)."""
    try:
        loader.yaml_constructors[node.tag](loader, node)
    except CONVERT_ERRORS:
        tag = node.tag.rsplit(":", 1)[-1]
        value = node.value if len(node.value) <= 40 else f"{node.value[:30]}..."
        raise ConfigError(f"{where}: {value!r} is not a valid {tag}") from None


def _check_nodes(root: yaml.Node, source: str, lines: dict, loader: yaml.SafeLoader) -> None:
    """Record the line of every mapping key; reject duplicate keys (YAML silently keeps the last),
    recursive aliases, nesting deeper than MAX_NESTING, more than MAX_VALUES values once aliases
    are expanded, integers too long to be meant, and tagged values that PyYAML cannot convert.

    Walks the node graph once, without expanding aliases: a node reached again through an alias is
    not walked again, only counted by the size it expands to.
    """
    expanded: dict[int, int] = {}  # id(node) -> values it expands to, once walked
    walking: set[int] = set()  # the nodes on the current path: reaching one again is a cycle
    stack: list[tuple[yaml.Node, tuple[str, ...], int, bool]] = [(root, (), 0, False)]
    while stack:
        node, path, depth, done = stack.pop()
        ident = id(node)
        children = _children(node)
        if done:
            walking.discard(ident)
            expanded[ident] = 1 + sum(expanded[id(child)] for child in children)
            if expanded[ident] > MAX_VALUES:
                raise ConfigError(f"{source}: expands to more than {MAX_VALUES:,} values "
                                  f"(aliases repeating aliases?); a config needs a few dozen")
            continue
        line = node.start_mark.line + 1
        if ident in expanded:
            continue
        if ident in walking:
            raise ConfigError(f"{source}:{line}: {'.'.join(path) or 'config'}: an alias refers to "
                              f"itself (a recursive alias)")
        if depth > MAX_NESTING:
            raise ConfigError(f"{source}:{line}: nested more than {MAX_NESTING} levels deep")
        if isinstance(node, yaml.ScalarNode) and node.tag == INT_TAG and len(node.value) > MAX_DIGITS:
            raise ConfigError(f"{source}:{line}: {'.'.join(path) or 'value'}: a number of "
                              f"{len(node.value):,} digits is not a config value")
        if isinstance(node, yaml.ScalarNode) and node.tag in CONVERTED_TAGS:
            _check_scalar(loader, node, f"{source}:{line}: {'.'.join(path) or 'value'}")
        walking.add(ident)
        stack.append((node, path, depth, True))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                key_path = path + (key,)
                if key in seen:
                    raise ConfigError(f"{source}:{key_node.start_mark.line + 1}: "
                                      f"{'.'.join(key_path)}: key given twice")
                seen.add(key)
                lines.setdefault(key_path, key_node.start_mark.line + 1)
                stack.append((key_node, key_path, depth + 1, False))
                stack.append((value_node, key_path, depth + 1, False))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, path, depth + 1, False) for item in node.value)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def parse_yaml(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse YAML text within the bounds above; return the data and the line of each key path."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: more than {MAX_CONFIG_BYTES:,} characters; a config needs a "
                          f"few hundred")
    lines: dict[tuple[str, ...], int] = {}
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters here already
        node = loader.get_single_node()
        if node is None:
            return None, lines
        _check_nodes(node, source, lines, loader)
        return loader.construct_document(node), lines
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except ConfigError:
        raise
    except CONVERT_ERRORS as e:
        # A converter failing on a node _check_nodes does not test (a tag PyYAML adds later).
        raise ConfigError(f"{source}: a value PyYAML cannot convert ({type(e).__name__}: "
                          f"{str(e)[:80]})") from None
    except RecursionError:  # PyYAML's parser recurses once per nesting level
        raise ConfigError(f"{source}: nested more than {MAX_NESTING} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse a YAML config file; return the data and the line of each key path."""
    try:
        if not path.is_file():  # a FIFO or a device would hang the read or never end
            raise ConfigError(f"{path}: not a regular file")
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        text = raw.decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    return parse_yaml(text, str(path))


# ---- parsing ------------------------------------------------------------------------------------


class _Where:
    """Formats `file:line: key:` prefixes for error messages."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]):
        self.source, self.lines = source, lines

    def __call__(self, path: tuple[str, ...], key: str | None = None) -> str:
        line = None
        for n in range(len(path), 0, -1):  # the key's own line, else its nearest parent's
            line = self.lines.get(path[:n])
            if line:
                break
        prefix = f"{self.source}:{line}" if line else self.source
        return f"{prefix}: {key if key is not None else '.'.join(path)}"


# The short names run ids show (`lr0.1`, `bs64`, `nobn`), as users may type them: `train.lr`.
SHORT_NAMES = {f"{key.rsplit('.', 1)[0]}.{option.short}": key for key, option in SCHEMA.items()
               if option.short and "." in key and not key.endswith("." + option.short)}


def _unknown_key(key: str, candidates: list[str]) -> str:
    if key in SHORT_NAMES:  # a config names each key one way: its full name
        real = SHORT_NAMES[key]
        return (f"unknown key (did you mean {real}? {key.rsplit('.', 1)[-1]} is its short name "
                f"in run ids)")
    close = difflib.get_close_matches(key, candidates, n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


def _is_hidden(name: str) -> bool:
    """`.`, `..`: names that a path would read as this or the parent directory; and `.name`, a
    hidden directory that listing results skips."""
    return name.startswith(".")


def check_name(name: str, what: str, allowed: re.Pattern, letters: str) -> str | None:
    """Why `name` cannot name a directory, or None when it can."""
    if not allowed.fullmatch(name) or _is_hidden(name):
        return f"use {letters} only, not starting with a dot (it names a directory), got {name!r}"
    if len(name) > MAX_NAME:
        return f"at most {MAX_NAME} characters (it names a directory), got {len(name)}"
    return None


def check_value(key: str, value: Any, where: str) -> Any:
    """Validate one option value; raise ConfigError naming where it came from."""
    if key not in SCHEMA:
        raise ConfigError(f"{where}: {_unknown_key(key, list(SCHEMA))}")
    try:
        return SCHEMA[key].check(value)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _flatten(mapping: Any, where: _Where, path: tuple[str, ...], prefix: str = "") -> dict[str, tuple[Any, tuple]]:
    """{model: {depth: 2}} or {model.depth: 2} -> {"model.depth": (2, key path for line lookup)}."""
    out: dict[str, tuple[Any, tuple]] = {}
    if mapping is None:  # `model:` with nothing under it
        return out
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where(path)}: expected a mapping of keys to values, got {mapping!r}")
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if dotted not in SCHEMA and isinstance(value, dict) and any(
                k.startswith(dotted + ".") for k in SCHEMA):
            items = _flatten(value, where, path + (str(key),), dotted + ".").items()
        else:
            items = [(dotted, (value, path + (str(key),)))]
        for flat, (flat_value, flat_path) in items:
            if flat in out:  # `model: {hidden: [8]}` and `model.hidden: [4]` side by side
                raise ConfigError(f"{where(flat_path, '.'.join(flat_path))}: given twice (also as "
                                  f"{where(out[flat][1], '.'.join(out[flat][1]))})")
            out[flat] = (flat_value, flat_path)
    return out


def _parse_variants(raw: Any, where: _Where, origins: dict | None = None) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where(('variants',))}: expected a mapping of variant names to overrides")
    variants: dict[str, dict[str, Any]] = {}
    for name, overrides in raw.items():
        name = str(name)
        path = ("variants", name)
        if not VARIANT_NAME.fullmatch(name) or _is_hidden(name):
            raise ConfigError(f"{where(path)}: variant names may use letters, digits, _ and . only, "
                              f"and not start with a dot")
        if len(name) > MAX_NAME // 2:  # it starts every run id, which has MAX_NAME characters
            raise ConfigError(f"{where(path)}: variant names have at most {MAX_NAME // 2} "
                              f"characters, got {len(name)}")
        variants[name] = {}
        for key, (value, key_path) in _flatten(overrides or {}, where, path).items():
            label = where(key_path, f"variants.{name}.{key}")
            if key in NOT_VARIABLE:
                raise ConfigError(f"{label}: cannot vary per variant")
            variants[name][key] = check_value(key, value, label)
            if origins is not None:
                origins[("variant", name, key)] = label
    return variants


def _parse_sweep(raw: Any, where: _Where, origins: dict | None = None) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    sweep: dict[str, list[Any]] = {}
    for key, (values, key_path) in _flatten(raw, where, ("sweep",)).items():
        label = where(key_path, f"sweep.{key}")
        if key in NOT_VARIABLE:
            raise ConfigError(f"{label}: cannot be swept" + (" (list the seeds in train.seeds)"
                                                              if key == "train.seeds" else ""))
        if key not in SCHEMA:
            raise ConfigError(f"{label}: {_unknown_key(key, list(SCHEMA))}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{label}: expected a non-empty list of values to sweep, got {values!r}")
        checked = [check_value(key, v, f"{label}[{i + 1}]") for i, v in enumerate(values)]
        canonical = [json.dumps(v, sort_keys=True) for v in checked]
        if len(set(canonical)) != len(canonical):
            raise ConfigError(f"{label}: a value is listed twice")
        sweep[key] = checked
        if origins is not None:
            origins[("sweep", key)] = label
    return sweep


def set_label(text: str) -> str:
    """`--set KEY=VALUE` as error messages name it: whole unless it is too long to read."""
    return f"--set {text}" if len(text) <= 100 else f"--set {text[:60]}... ({len(text):,} characters)"


def parse_override(text: str) -> tuple[str, Any]:
    """`train.learning_rate=0.1` -> ("train.learning_rate", 0.1); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    label = set_label(text)
    if not sep or not key:
        raise ConfigError(f"{label}: expected KEY=VALUE, e.g. --set train.learning_rate=0.1")
    try:
        value = parse_yaml(raw, label)[0] if raw.strip() else None
    except ConfigError as e:
        if "invalid YAML" in str(e):
            raise ConfigError(f"{label}: the value is not valid YAML") from None
        raise ConfigError(str(e).replace(f"{label}:1: ", f"{label}: ", 1)) from None
    return key, value


def parse_sweep_option(text: str) -> tuple[str, Any, str]:
    """`--sweep train.learning_rate=0.01,0.1` -> ("train.learning_rate", [0.01, 0.1], label), the
    label naming the option in error messages.

    The values are read as one YAML flow list, so a value may itself be a list:
    `--sweep model.hidden=[64],[64,64]`.
    """
    key, sep, raw = text.partition("=")
    key, label = key.strip(), set_label(text).replace("--set", "--sweep", 1)
    if not sep or not key or not raw.strip():
        raise ConfigError(f"{label}: expected KEY=V1,V2,..., e.g. --sweep train.learning_rate=0.01,0.1")
    try:
        values = parse_yaml(f"[{raw}]", label)[0]
    except ConfigError:
        raise ConfigError(f"{label}: the values are not a valid YAML list") from None
    return key, values, label


def _select_variants(variants: dict[str, dict[str, Any]], names: str) -> dict[str, dict[str, Any]]:
    """`--variants bn,no_bn`: only those variants, in the config's order."""
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    known = list(variants or {"base": {}})
    unknown = [name for name in wanted if name not in known]
    if not wanted or unknown:
        what = f"no variant {unknown[0]!r}" if unknown else "name at least one variant"
        raise ConfigError(f"--variants {names}: {what} (variants: {', '.join(known)})")
    return {name: variants[name] for name in known if name in wanted} if variants else variants


def load_experiment(path: str | Path, overrides: list[str] | None = None,
                    sweeps: list[str] | None = None, only_variants: str | None = None) -> Experiment:
    """Read and validate one config file, with `--set KEY=VALUE` overrides, `--sweep KEY=V1,V2`
    axes and a `--variants A,B` selection applied (in that order)."""
    path = Path(path)
    data, lines = read_yaml(path)
    where = _Where(str(path), lines)
    if data is None and not overrides:  # an empty file alone is likelier a mistake than a choice
        raise ConfigError(f"{path}: the config is empty; name what to train (e.g. `data: {{dataset: "
                          f"mnist}}`), or write `{{}}` for every default (the notebook: MNIST, "
                          f"5 epochs, with and without BN)")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")

    base = {key: option.default for key, option in SCHEMA.items()}
    origins: dict[tuple[str, ...], str] = {}
    raw_variants: Any = DEFAULT_VARIANTS
    raw_sweep: Any = None
    given: dict[str, str] = {}  # dotted key -> where the file gives it, to catch it given twice

    def set_base(dotted: str, value: Any, label: str) -> None:
        if dotted in given:  # `model: {hidden: [8]}` and `model.hidden: [4]`: not last-wins
            raise ConfigError(f"{label}: given twice (also as {given[dotted]})")
        given[dotted] = origins[("base", dotted)] = label
        base[dotted] = check_value(dotted, value, label)

    for key, value in data.items():
        key = str(key)
        if key == "variants":
            raw_variants = value
        elif key == "sweep":
            raw_sweep = value
        elif key in SECTIONS:
            for dotted, (v, key_path) in _flatten(value, where, (key,), key + ".").items():
                set_base(dotted, v, where(key_path, dotted))
        elif key in SCHEMA:
            set_base(key, value, where((key,)))
        else:
            candidates = list(SCHEMA) + list(SECTIONS) + list(STRUCTURE_KEYS)
            raise ConfigError(f"{where((key,))}: {_unknown_key(key, candidates)}")
    variants = _parse_variants(raw_variants, where, origins)
    sweep = _parse_sweep(raw_sweep, where, origins)

    set_keys: list[str] = []
    for text in overrides or []:
        key, value = parse_override(text)
        label = set_label(text)
        if key.startswith("sweep."):
            swept = key[len("sweep."):]
            sweep.update(_parse_sweep({swept: value}, _Where(label, {}), origins))
        elif key == "variants" or key.startswith("variants."):
            name, _, option = key[len("variants."):].partition(".")
            raw = value if key == "variants" else {name: ({option: value} if option else value)}
            parsed = _parse_variants(raw, _Where(label, {}), origins)
            if key == "variants":
                variants = parsed
            else:
                variants.setdefault(name, {}).update(parsed[name])
        else:
            if key in SECTIONS:
                raise ConfigError(f"{label}: name one key, e.g. --set {key}.{_first_option(key)}=...")
            try:
                base[key] = check_value(key, value, label)
            except ConfigError as e:
                if isinstance(value, str) and "," in value and key in SCHEMA:
                    raise ConfigError(f"{e}; to train each value, sweep them: "
                                      f"--set sweep.{key}=[{value}]") from None
                raise
            origins[("set", key)] = label
            sweep.pop(key, None)  # the command line wins: a set key is no longer swept
            if key not in set_keys and key not in NOT_VARIABLE:
                set_keys.append(key)

    for text in sweeps or []:  # crossed like `sweep:`; an axis of the file with its key is replaced
        key, values, label = parse_sweep_option(text)
        if key in set_keys:
            raise ConfigError(f"{label}: {key} is also given by {origins[('set', key)]}; "
                              f"set it in one place")
        sweep.update(_parse_sweep({key: values}, _Where(label, {}), origins))
    if only_variants is not None:
        variants = _select_variants(variants, only_variants)

    for name, overrides_ in variants.items():
        for key in overrides_:
            if key in sweep:
                raise ConfigError(f"{where(('variants', name, key), f'variants.{name}.{key}')}: "
                                  f"also swept; set it in one place")
    name = base.pop("name") or path.stem
    problem = check_name(name, "name", EXPERIMENT_NAME, "letters, digits, _, . and -")
    if problem:
        label = "name" if "name" in given or ("set", "name") in origins else "name (the file's name)"
        raise ConfigError(f"{origins.get(('set', 'name')) or where(('name',), label)}: {problem}")
    experiment = Experiment(name=name, source=str(path), base=base, variants=variants, sweep=sweep,
                            set_keys=set_keys, lines=lines, origins=origins)
    expand(experiment)  # resolve every run now, so impossible combinations fail before anything runs
    return experiment


def _first_option(section: str) -> str:
    return next(k for k in SCHEMA if k.startswith(section + ".")).split(".", 1)[1]


# ---- expansion ----------------------------------------------------------------------------------


def _resolve(params: dict[str, Any], where: _Where, variant: str) -> dict[str, Any]:
    """Cross-key checks and normalisation of one run's params."""
    if params["train.steps"] is not None:
        params["train.epochs"] = None  # steps win; keep the resolved config honest about it
    elif params["train.epochs"] is None:
        raise ConfigError(f"{where(('train',), 'train.epochs')}: set train.epochs or train.steps")
    limit, dataset = params["data.train_limit"], params["data.dataset"]
    in_variant = f" (variant {variant})" if variant else ""
    _resolve_functions(params, where)
    if dataset not in TRAIN_SIZES:  # the researcher's own: its size is known once it is loaded
        if params["record.test"]:  # a dataset function returns train and validation splits only
            raise ConfigError(f"{where(('record', 'test'), 'record.test')}: data.dataset is a function, "
                              "which has no test split; evaluate a split of your own in it instead"
                              + in_variant)
        _resolve_model(params, where, in_variant)
        return params
    available = TRAIN_SIZES[dataset]
    validation = params["data.validation"]
    if params["record.test"] and validation == "test":
        raise ConfigError(f"{where(('record', 'test'), 'record.test')}: the test split is already the "
                          "validation data (data.validation: test); hold out a fraction of the "
                          "training split instead, e.g. data.validation: 0.1" + in_variant)
    if validation != "test":
        held_out = int(round(available * validation))  # as data.load_dataset splits
        if held_out < 1 or held_out >= available:
            raise ConfigError(f"{where(('data', 'validation'), 'data.validation')}: {validation:g} "
                              f"of the {available} training examples of {dataset} leaves "
                              f"{'no validation' if held_out < 1 else 'no training'} examples"
                              + in_variant)
        available -= held_out
    if limit is not None and limit > available:
        raise ConfigError(f"{where(('data', 'train_limit'), 'data.train_limit')}: {limit} is more "
                          f"than the {available} training examples {dataset} has" + in_variant)
    batch_size = params["train.batch_size"]
    if batch_size > (limit or available):  # Keras would train one short batch per epoch, silently
        raise ConfigError(f"{where(('train', 'batch_size'), 'train.batch_size')}: "
                          f"{short_integer(batch_size)} is more than the {limit or available} "
                          f"training examples ({dataset}"
                          f"{', data.train_limit' if limit else ''})" + in_variant)
    # The run's schedule is built from these; bound it here so `validate` catches a runaway.
    per_epoch = -(-(limit or available) // batch_size)
    total = params["train.steps"] or params["train.epochs"] * per_epoch
    if total > MAX_STEPS:
        key = "train.steps" if params["train.steps"] else "train.epochs"
        raise ConfigError(f"{where(tuple(key.split('.')), key)}: {total:,} optimizer steps; at most "
                          f"{MAX_STEPS:,} per run" + in_variant)
    _resolve_model(params, where, in_variant)
    return params


def _resolve_functions(params: dict[str, Any], where: _Where) -> None:
    """A model or dataset given as a function: checked, and its file path made absolute (relative
    to the config's folder), see bncompare/callables.py."""
    from bncompare.callables import CallableError, resolve

    for key in FUNCTION_KEYS:
        if is_reference(params[key]):
            try:
                params[key] = resolve(key, params[key], Path(where.source).parent)
            except CallableError as e:
                raise ConfigError(f"{where(tuple(key.split('.')), key)}"
                                  f"{str(e).removeprefix(key)}") from None


# Options that only one normaliser reads, and that normaliser.
NORM_OPTIONS = {"model.groups": "group", "model.ghost_batch_size": "ghost",
                "model.renorm_clipping": "renorm"}


def _resolve_model(params: dict[str, Any], where: _Where, in_variant: str) -> None:
    """model.norm vs its shorthand model.batch_norm, and the model keys that depend on each other.

    `norm: batch|none` is stored as `batch_norm: true|false` with norm null, so that it is the same
    run (same id) as the shorthand. Options of a normaliser the run does not use go back to their
    defaults: they change nothing it learns, so they must not rename it.
    """
    from bncompare.models import CONVOLUTIONAL, layer_sizes, norm_of

    def error(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where(tuple(key.split('.')), key)}: {message}{in_variant}")

    norm = params["model.norm"]
    if params["model.batch_norm"] and norm not in (None, "batch"):
        raise error("model.norm", f"{norm} contradicts model.batch_norm: true; set one of them "
                    "(give each variant its own model.norm to compare normalisers)")
    if norm in ("batch", "none"):
        params["model.batch_norm"], params["model.norm"] = norm == "batch", None
    norm = norm_of(params)
    for key, owner in NORM_OPTIONS.items():
        if norm != owner:
            params[key] = copy.deepcopy(SCHEMA[key].default)
    if params["model.bn_noise"] is not None and norm == "none":
        raise error("model.bn_noise", "adds noise after each normaliser, but this run has none "
                    "(set model.norm or model.batch_norm: true)")
    if norm == "ghost" and params["train.batch_size"] % params["model.ghost_batch_size"]:
        raise error("model.ghost_batch_size", f"{params['model.ghost_batch_size']} does not divide "
                    f"train.batch_size {params['train.batch_size']}")
    extra = [f"record.bn_eval {mode}" for mode in params["record.bn_eval"] if mode != "moving"]
    extra += ["record.train_eval"] * (params["record.train_eval"] > 0)
    extra += ["model.bn_variance: unbiased"] * (params["model.bn_variance"] == "unbiased")
    if norm == "ghost" and extra:
        # Ghost BN keeps its statistics inside a custom layer, which bn_eval.py cannot re-run.
        raise error("model.norm", f"ghost cannot be evaluated with {', '.join(extra)} (they "
                    "re-run Keras BatchNormalization layers); use norm: batch for them")
    kind = params["model.kind"]
    if kind not in MODEL_KINDS:  # the researcher's own model: its layers are its business
        return
    sizes = layer_sizes(params)
    size_key = "model.hidden" if params["model.hidden"] else "model.depth"
    if kind.startswith("res") and len(sizes) % 2:
        raise error(size_key, f"{kind} is built from blocks of two layers: needs an even number of "
                    f"hidden layers, got {len(sizes)}")
    if params["model.skip_init"] and not kind.startswith("res"):
        raise error("model.skip_init", f"needs a residual network (model.kind: resmlp or rescnn), "
                    f"not {kind}")
    if norm == "group" and any(size % params["model.groups"] for size in sizes):
        what = "filters" if kind in CONVOLUTIONAL else "units"
        raise error("model.groups", f"{params['model.groups']} groups do not divide the {what} of "
                    f"every layer ({', '.join(map(str, sorted(set(sizes))))})")
    if (params["model.bn_variance"] == "unbiased" and norm in ("batch", "renorm")
            and kind not in CONVOLUTIONAL and params["train.batch_size"] < 2):
        raise error("model.bn_variance", "unbiased multiplies by m/(m-1), m = train.batch_size: "
                    "needs a batch of at least 2")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "x".join(_format_value(v) for v in value)
    if isinstance(value, dict):
        return _format_value(value.get("name", "")) + "".join(
            f"{k[:3]}{_format_value(v)}" for k, v in value.items() if k != "name")
    return str(value)


def _id_part(key: str, value: Any) -> str:
    short = SCHEMA[key].short or key.rsplit(".", 1)[-1]
    if is_reference(value):  # a model or dataset function reads as its name, not its path
        value = function_name(value)
    # None (`--set model.hidden=null`: not given) reads like false: `nohidden`, not `hiddenNone`.
    text = (f"no{short}" if value is False or value is None else short if value is True
            else short + _format_value(value))
    return re.sub(r"[^A-Za-z0-9._+]", "", text)


def identity(params: dict[str, Any]) -> dict[str, Any]:
    """The params that name a run: what it learns and records. Keys added after the first release
    count only when set to something other than their default (see `Option.added`), so a new key
    never renames the runs of an older release. A model or dataset given as a function counts as
    its name and a hash of its source file, not its path (see callables.fingerprint)."""
    return {k: fingerprint(v) if is_reference(v) and k in FUNCTION_KEYS else v
            for k, v in params.items()
            if k == "train.seed" or (SCHEMA[k].in_run_id
                                     and (SCHEMA[k].added == 1 or v != SCHEMA[k].default))}


def config_hash(params: dict[str, Any]) -> str:
    """Short digest of the params that decide what a run learns and records."""
    blob = json.dumps(identity(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:6]


# Keys that do nothing when another key has a certain value: setting one of them there is a
# silent no-op (`--set model.depth=4` on a config with `model.hidden`), so it is an error.
# key -> (the key that decides, is the key ignored?, why)
IGNORED_WHEN: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "model.depth": ("model.hidden", lambda hidden: hidden is not None,
                    "gives the layer sizes; change model.hidden (or set it to null)"),
    "model.width": ("model.hidden", lambda hidden: hidden is not None,
                    "gives the layer sizes; change model.hidden (or set it to null)"),
    "train.epochs": ("train.steps", lambda steps: steps is not None,
                     "gives the length of training; change train.steps (or set it to null)"),
    "train.momentum": ("train.optimizer", lambda optimizer: optimizer != "momentum",
                       "is not momentum: only the momentum optimizer reads train.momentum"),
}
# Where a value comes from, lowest precedence first.
LEVELS = {"default": 0, "base": 1, "variant": 2, "sweep": 2, "set": 3}


def run_count(experiment: Experiment) -> int:
    """How many runs the experiment expands to, without expanding it."""
    count = max(len(experiment.variants), 1) * len(experiment.base["train.seeds"])
    for values in experiment.sweep.values():
        count *= len(values)
    return count


def _origin(experiment: Experiment, key: str, variant: str, axes: list[str]) -> tuple[str, ...]:
    if key in experiment.set_keys:
        return ("set", key)
    if key in axes:
        return ("sweep", key)
    if key in experiment.variants.get(variant, {}):
        return ("variant", variant, key)
    if ("base", key) in experiment.origins:
        return ("base", key)
    return ("default", key)


def _check_ignored(experiment: Experiment, variant: str, params: dict[str, Any], axes: list[str],
                   ignored: dict[tuple[str, ...], list[bool]], deciders: dict) -> None:
    """Note, per place a key was given, whether this run ignores it (see IGNORED_WHEN)."""
    for key, (decider, is_ignored, _) in IGNORED_WHEN.items():
        origin = _origin(experiment, key, variant, axes)
        if origin[0] == "default":
            continue
        decided_at = _origin(experiment, decider, variant, axes)
        # Both in one file (as in every run's resolved config.yaml) is a documented precedence, and
        # so is a --set of the deciding key after the other (`--set train.epochs=2 --set
        # train.steps=10`); a key given later than the key that decides was meant to take effect.
        later = (LEVELS[origin[0]] > LEVELS[decided_at[0]]
                 or (origin[0] == decided_at[0] == "set"
                     and experiment.set_keys.index(key) > experiment.set_keys.index(decider)))
        hit = later and params[key] is not None and is_ignored(params[decider])
        ignored.setdefault(origin, []).append(hit)
        if hit:
            deciders.setdefault(origin, (decided_at, params[decider]))


def _ignored_error(experiment: Experiment, ignored: dict, deciders: dict) -> None:
    """Raise for the first key that every run it reaches ignores."""
    for origin, hits in ignored.items():
        if not all(hits):
            continue
        decider, _, why = IGNORED_WHEN[origin[-1]]
        decided_at, value = deciders[origin]
        label = experiment.origins.get(decided_at, "")
        source = {"default": "its default", "set": label}.get(decided_at[0], label.rsplit(": ", 1)[0])
        state = "is swept" if decided_at[0] == "sweep" else f"= {json.dumps(value)}"
        raise ConfigError(f"{experiment.origins[origin]}: has no effect: {decider} {state} "
                          f"({source}), which {why}")


def _same_config_error(experiment: Experiment, first: Run, second: Run) -> ConfigError:
    """Two runs of one experiment that would learn exactly the same thing."""
    hint = ""
    shadowed = [(key, name) for key in experiment.set_keys for name in (first.variant, second.variant)
                if key in experiment.variants.get(name, {})]
    if shadowed:
        key, name = shadowed[0]
        hint = (f": {experiment.origins[('set', key)]} replaces what "
                f"{experiment.origins[('variant', name, key)]} sets")
    elif first.variant != second.variant:
        hint = f": variants {first.variant} and {second.variant} set the same values"
    else:
        hint = ": they differ only in keys that do not change what a run learns"
    return ConfigError(f"{experiment.source}: runs {first.run_id} and {second.run_id} are the same "
                       f"config, trained twice under two names{hint}")


def expand(experiment: Experiment) -> list[Run]:
    """Every variant x sweep combination x seed, as resolved runs in a stable order."""
    where = _Where(experiment.source, experiment.lines)
    count = run_count(experiment)
    if count > MAX_RUNS:
        raise ConfigError(f"{experiment.source}: expands to {count:,} runs (variants x sweep "
                          f"values x seeds); at most {MAX_RUNS:,} per config")
    variants = experiment.variants or {"base": {}}
    axes = list(experiment.sweep)
    # Keys that change speed, not results (in_run_id=False), stay out of the readable part too.
    id_keys = [k for k in axes + [k for k in experiment.set_keys if k not in axes]
               if SCHEMA[k].in_run_id]
    runs: list[Run] = []
    ignored: dict[tuple[str, ...], list[bool]] = {}
    deciders: dict[tuple[str, ...], tuple[str, ...]] = {}
    by_identity: dict[str, Run] = {}
    for variant, overrides in variants.items():
        for combo in itertools.product(*(experiment.sweep[k] for k in axes)):
            params = dict(experiment.base)
            params.update(overrides)
            params.update(zip(axes, combo))
            for key in experiment.set_keys:  # the command line wins over variants too
                params[key] = experiment.base[key]
            _check_ignored(experiment, variant, params, axes, ignored, deciders)
            for seed in params.pop("train.seeds"):
                run_params = _resolve({**params, "train.seed": seed}, where, variant)
                parts = [variant] + [_id_part(k, run_params[k]) for k in id_keys]
                run_id = "-".join(parts + [f"s{seed}", config_hash(run_params)])
                if len(run_id) > MAX_NAME:
                    raise ConfigError(f"{experiment.source}: run id {run_id[:40]}... has "
                                      f"{len(run_id)} characters; at most {MAX_NAME} (it names a "
                                      f"directory): shorten variant names or sweep fewer keys")
                run = Run(experiment.name, variant, run_id, run_params, experiment.source)
                blob = json.dumps(identity(run_params), sort_keys=True)
                if blob in by_identity:
                    _ignored_error(experiment, ignored, deciders)  # the likelier cause, if any
                    raise _same_config_error(experiment, by_identity[blob], run)
                by_identity[blob] = run
                runs.append(run)
    _ignored_error(experiment, ignored, deciders)
    return runs


def load_runs(paths: list[str | Path], overrides: list[str] | None = None,
              sweeps: list[str] | None = None, only_variants: str | None = None,
              backend: str = "tensorflow") -> list[Run]:
    """Load every config, expand it, and drop exact duplicates (same experiment and run id); the
    runs as trained on Keras's `backend` (see `on_backend`)."""
    runs: dict[tuple[str, str], Run] = {}
    for path in paths:
        for run in expand(load_experiment(path, overrides, sweeps, only_variants)):
            runs.setdefault((run.experiment, run.run_id), run)
    return on_backend(list(runs.values()), backend)


def on_backend(runs: list[Run], backend: str) -> list[Run]:
    """The runs as trained on Keras's `backend`: each backend draws other initial weights, so a
    run's id names it, except tensorflow's (ids of earlier releases, all TensorFlow, unchanged)."""
    if backend == "tensorflow":
        return runs
    named = []
    for run in runs:
        blob = json.dumps({**identity(run.params), "backend": backend}, sort_keys=True,
                          separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).hexdigest()[:6]
        name = re.sub(r"[^A-Za-z0-9._+]", "", backend)  # KERAS_BACKEND may hold anything
        run_id = f"{run.run_id.rsplit('-', 1)[0]}-{name}-{digest}"
        if len(run_id) > MAX_NAME:
            raise ConfigError(f"{run.source}: run id {run_id[:40]}... has {len(run_id)} characters "
                              f"with the backend; at most {MAX_NAME}: shorten variant names")
        named.append(dataclasses.replace(run, run_id=run_id))
    return named


def varying_keys(runs: list[Run]) -> list[str]:
    """Params whose value differs between runs (seed excluded), in schema order."""
    keys = []
    for key in runs[0].params if runs else []:
        if key != "train.seed" and len({json.dumps(r.params[key], sort_keys=True) for r in runs}) > 1:
            keys.append(key)
    return keys
