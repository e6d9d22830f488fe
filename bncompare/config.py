"""Experiment configs: YAML loading with line numbers, --set overrides, expansion into runs.

An experiment (one YAML file) expands into runs: every variant x every combination of swept values
x every seed. Each run is a flat dict of dotted keys (``params``) plus a readable, unique run id
whose hash part is a digest of those params, so the same resolved config always gets the same id.

Precedence, lowest first: schema defaults, the file's keys, the variant's overrides, the swept
value, ``--set``. A ``--set`` of a swept key replaces that sweep axis with the one value.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bncompare.schema import DEFAULT_VARIANTS, SCHEMA, SECTIONS, STRUCTURE_KEYS

# Training examples per dataset, so that an impossible train_limit is caught before any data loads.
TRAIN_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000, "synthetic": 2_000}
VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
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


# ---- YAML with line numbers -------------------------------------------------------------------


def _key_lines(node: yaml.Node, path: tuple[str, ...], lines: dict, source: str) -> None:
    """Record the line of every mapping key; reject duplicate keys (YAML silently keeps the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{source}:{line}: {'.'.join(path + (key,))}: key given twice")
            seen.add(key)
            lines[path + (key,)] = line
            _key_lines(value_node, path + (key,), lines, source)


def read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse a YAML file; return the data and the line of each key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _key_lines(node, (), lines, str(path))
    return data, lines


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


def _unknown_key(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


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
            out.update(_flatten(value, where, path + (str(key),), dotted + "."))
        else:
            out[dotted] = (value, path + (str(key),))
    return out


def _parse_variants(raw: Any, where: _Where) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where(('variants',))}: expected a mapping of variant names to overrides")
    variants: dict[str, dict[str, Any]] = {}
    for name, overrides in raw.items():
        name = str(name)
        path = ("variants", name)
        if not VARIANT_NAME.match(name):
            raise ConfigError(f"{where(path)}: variant names may use letters, digits, _ and . only")
        variants[name] = {}
        for key, (value, key_path) in _flatten(overrides or {}, where, path).items():
            if key in NOT_VARIABLE:
                raise ConfigError(f"{where(key_path, f'variants.{name}.{key}')}: cannot vary per variant")
            variants[name][key] = check_value(key, value, where(key_path, f"variants.{name}.{key}"))
    return variants


def _parse_sweep(raw: Any, where: _Where) -> dict[str, list[Any]]:
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
    return sweep


def parse_override(text: str) -> tuple[str, Any]:
    """`train.learning_rate=0.1` -> ("train.learning_rate", 0.1); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set train.learning_rate=0.1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {text}: the value is not valid YAML") from None
    return key, value


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read and validate one config file, with `--set KEY=VALUE` overrides applied."""
    path = Path(path)
    data, lines = read_yaml(path)
    where = _Where(str(path), lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")

    base = {key: option.default for key, option in SCHEMA.items()}
    raw_variants: Any = DEFAULT_VARIANTS
    raw_sweep: Any = None
    for key, value in data.items():
        key = str(key)
        if key == "variants":
            raw_variants = value
        elif key == "sweep":
            raw_sweep = value
        elif key in SECTIONS:
            for dotted, (v, key_path) in _flatten(value, where, (key,), key + ".").items():
                base[dotted] = check_value(dotted, v, where(key_path, dotted))
        elif key in SCHEMA:
            base[key] = check_value(key, value, where((key,)))
        else:
            candidates = list(SCHEMA) + list(SECTIONS) + list(STRUCTURE_KEYS)
            raise ConfigError(f"{where((key,))}: {_unknown_key(key, candidates)}")
    variants = _parse_variants(raw_variants, where)
    sweep = _parse_sweep(raw_sweep, where)

    set_keys: list[str] = []
    for text in overrides or []:
        key, value = parse_override(text)
        label = f"--set {text}"
        if key.startswith("sweep."):
            swept = key[len("sweep."):]
            sweep.update(_parse_sweep({swept: value}, _Where(label, {})))
        elif key == "variants" or key.startswith("variants."):
            name, _, option = key[len("variants."):].partition(".")
            raw = value if key == "variants" else {name: ({option: value} if option else value)}
            parsed = _parse_variants(raw, _Where(label, {}))
            if key == "variants":
                variants = parsed
            else:
                variants.setdefault(name, {}).update(parsed[name])
        else:
            if key in SECTIONS:
                raise ConfigError(f"{label}: name one key, e.g. --set {key}.{_first_option(key)}=...")
            base[key] = check_value(key, value, label)
            sweep.pop(key, None)  # the command line wins: a set key is no longer swept
            if key not in set_keys and key not in NOT_VARIABLE:
                set_keys.append(key)

    for name, overrides_ in variants.items():
        for key in overrides_:
            if key in sweep:
                raise ConfigError(f"{where(('variants', name, key), f'variants.{name}.{key}')}: "
                                  f"also swept; set it in one place")
    name = base.pop("name") or path.stem
    if not re.match(r"^[A-Za-z0-9_.-]+$", name):
        raise ConfigError(f"{where(('name',), 'name')}: use letters, digits, _, . and - only "
                          f"(it names a directory), got {name!r}")
    experiment = Experiment(name=name, source=str(path), base=base, variants=variants, sweep=sweep,
                            set_keys=set_keys, lines=lines)
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
    available = TRAIN_SIZES[dataset]
    if params["data.validation"] != "test":
        available = int(available * (1 - params["data.validation"]))
    if limit is not None and limit > available:
        raise ConfigError(f"{where(('data', 'train_limit'), 'data.train_limit')}: {limit} is more "
                          f"than the {available} training examples {dataset} has"
                          + (f" (variant {variant})" if variant else ""))
    _resolve_model(params, where, f" (variant {variant})" if variant else "")
    return params


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
    sizes = layer_sizes(params)
    size_key = "model.hidden" if params["model.hidden"] else "model.depth"
    kind = params["model.kind"]
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
    if norm == "ghost" and params["train.batch_size"] % params["model.ghost_batch_size"]:
        raise error("model.ghost_batch_size", f"{params['model.ghost_batch_size']} does not divide "
                    f"train.batch_size {params['train.batch_size']}")
    if params["model.bn_noise"] is not None and norm == "none":
        raise error("model.bn_noise", "adds noise after each normaliser, but this run has none "
                    "(set model.norm or model.batch_norm: true)")


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
    text = f"no{short}" if value is False else short if value is True else short + _format_value(value)
    return re.sub(r"[^A-Za-z0-9._+]", "", text)


def identity(params: dict[str, Any]) -> dict[str, Any]:
    """The params that name a run: what it learns and records. Keys added after the first release
    count only when set to something other than their default (see `Option.added`), so a new key
    never renames the runs of an older release."""
    return {k: v for k, v in params.items()
            if k == "train.seed" or (SCHEMA[k].in_run_id
                                     and (SCHEMA[k].added == 1 or v != SCHEMA[k].default))}


def config_hash(params: dict[str, Any]) -> str:
    """Short digest of the params that decide what a run learns and records."""
    blob = json.dumps(identity(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:6]


def expand(experiment: Experiment) -> list[Run]:
    """Every variant x sweep combination x seed, as resolved runs in a stable order."""
    where = _Where(experiment.source, experiment.lines)
    variants = experiment.variants or {"base": {}}
    axes = list(experiment.sweep)
    # Keys that change speed, not results (in_run_id=False), stay out of the readable part too.
    id_keys = [k for k in axes + [k for k in experiment.set_keys if k not in axes]
               if SCHEMA[k].in_run_id]
    runs: list[Run] = []
    for variant, overrides in variants.items():
        for combo in itertools.product(*(experiment.sweep[k] for k in axes)):
            params = dict(experiment.base)
            params.update(overrides)
            params.update(zip(axes, combo))
            for key in experiment.set_keys:  # the command line wins over variants too
                params[key] = experiment.base[key]
            for seed in params.pop("train.seeds"):
                run_params = _resolve({**params, "train.seed": seed}, where, variant)
                parts = [variant] + [_id_part(k, run_params[k]) for k in id_keys]
                run_id = "-".join(parts + [f"s{seed}", config_hash(run_params)])
                runs.append(Run(experiment.name, variant, run_id, run_params, experiment.source))
    return runs


def load_runs(paths: list[str | Path], overrides: list[str] | None = None) -> list[Run]:
    """Load every config, expand it, and drop exact duplicates (same experiment and run id)."""
    runs: dict[tuple[str, str], Run] = {}
    for path in paths:
        for run in expand(load_experiment(path, overrides)):
            runs.setdefault((run.experiment, run.run_id), run)
    return list(runs.values())


def varying_keys(runs: list[Run]) -> list[str]:
    """Params whose value differs between runs (seed excluded), in schema order."""
    keys = []
    for key in runs[0].params if runs else []:
        if key != "train.seed" and len({json.dumps(r.params[key], sort_keys=True) for r in runs}) > 1:
            keys.append(key)
    return keys
