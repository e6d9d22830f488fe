"""Every config key in one place: its default, what it means, and how its value is checked.

The schema is flat (dotted keys such as ``model.depth``) because that is how users override keys
(``--set model.depth=4``), how variants and sweeps name them, and how ``metrics.json`` records them
(``params``). Checks are small functions that return the normalised value or raise ``ValueError``
with a message phrased for the user ("expected an integer >= 1, got 'abc'").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

Check = Callable[[Any], Any]

# Bounds on what a config may ask for, so that a typo fails in `validate`, not hours into a run or
# deep inside Keras (a 1000-layer Sequential model overflows Python's recursion limit).
MAX_DEPTH = 256  # hidden layers / conv blocks
MAX_WIDTH = 100_000  # units or filters per layer
MAX_STEPS = 10**8  # optimizer steps of one run, whether given as train.steps or train.epochs
MAX_SEED = 2**32 - 1  # NumPy's and Keras's seeds are 32-bit
MAX_BATCH = 2**31 - 1  # TensorFlow's tensor dimensions are 32-bit (a dataset function's size is
# known only once loaded; a built-in dataset's bounds the batch further, in config._resolve)
MAX_FACTORS = 32  # record.landscape_factors: each costs a gradient evaluation at every eval point


# ---- value checks ------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """The value as a one-line error shows it: YAML spelling for booleans, long ones shortened."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return short_integer(value)
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text):,} characters)"


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {_describe(value)}")


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    def check(value: Any) -> int:
        # bool is a subclass of int in Python; `depth: true` is a typo, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValueError(f"expected an integer{_bound(minimum, maximum)}, got {_describe(value)}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValueError(f"expected an integer{_bound(minimum, maximum)}, got {short_integer(value)}")
        return value

    return check


def short_integer(value: int) -> str:
    """An integer as the user can read it in a one-line error, however many digits it has."""
    text = str(value)
    return text if len(text) <= 20 else f"a number of {len(text)} digits"


def number(minimum: float | None = None, *, above: float | None = None,
           maximum: float | None = None, below: float | None = None) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string; accept what the user obviously meant.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number{limits}, got {_describe(value)}")
        try:
            value = float(value)  # an integer such as 10**400 does not fit a float
        except OverflowError:
            raise ValueError(f"expected a number{limits}, got {short_integer(value)}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a number{limits}, got {_describe(value)}")
        if ((minimum is not None and value < minimum) or (above is not None and value <= above)
                or (maximum is not None and value > maximum) or (below is not None and value >= below)):
            raise ValueError(f"expected a number{limits}, got {value:g}")
        return value

    parts = []
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if above is not None:
        parts.append(f"> {above:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    if below is not None:
        parts.append(f"< {below:g}")
    limits = (" " + " and ".join(parts)) if parts else ""
    return check


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str:
        if value in choices and isinstance(value, str):
            return value
        raise ValueError(f"expected one of {', '.join(choices)}; got {_describe(value)}")

    check.choices = choices  # type: ignore[attr-defined]
    return check


def name_or_function(*choices: str) -> Check:
    """One of the built-in names, or a researcher's own function (bncompare/callables.py)."""

    def check(value: Any) -> str:
        if value in choices and isinstance(value, str):
            return value
        if isinstance(value, str) and ":" in value:
            from bncompare.callables import check_syntax

            return check_syntax(value)
        names = ", ".join(choices)
        raise ValueError(f'expected one of {names}, or a function as "package.module:function" or '
                         f'"file.py:function"; got {_describe(value)}')

    return check


def optional(inner: Check) -> Check:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return check


def either(literal: str, inner: Check, what: str) -> Check:
    """A fixed word (e.g. "epoch") or a value accepted by `inner`."""

    def check(value: Any) -> Any:
        if value == literal:
            return value
        try:
            return inner(value)
        except ValueError:
            raise ValueError(f"expected {literal!r} or {what}, got {_describe(value)}") from None

    return check


def list_of(inner: Check, *, non_empty: bool = True, maximum: int | None = None) -> Check:
    def check(value: Any) -> list:
        if not isinstance(value, list) or (non_empty and not value):
            raise ValueError(f"expected a {'non-empty ' if non_empty else ''}list, got {_describe(value)}")
        if maximum is not None and len(value) > maximum:
            raise ValueError(f"expected a list of at most {maximum} items, got {len(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(inner(item))
            except ValueError as e:
                raise ValueError(f"item {i + 1}: {e}") from None
        return out

    return check


def _bound(minimum: int | None, maximum: int | None = None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum:,}"
    if maximum is not None:
        return f" <= {maximum:,}"
    return f" >= {minimum}" if minimum is not None else ""


# Keras initializer names and the arguments each accepts. Listed here rather than asked of Keras so
# that `bncompare validate` answers without importing TensorFlow.
INITIALIZERS: dict[str, tuple[str, ...]] = {
    "glorot_uniform": (), "glorot_normal": (), "he_uniform": (), "he_normal": (),
    "lecun_uniform": (), "lecun_normal": (), "zeros": (), "ones": (),
    "random_normal": ("mean", "stddev"), "random_uniform": ("minval", "maxval"),
    "truncated_normal": ("mean", "stddev"), "constant": ("value",), "orthogonal": ("gain",),
    "variance_scaling": ("scale", "mode", "distribution"),
}


# What Keras accepts for each argument (VarianceScaling raises on a scale <= 0 or an unknown mode or
# distribution; a negative standard deviation is meaningless), checked here for the same reason.
INITIALIZER_ARGUMENTS: dict[str, Check] = {
    "mean": number(), "stddev": number(minimum=0), "minval": number(), "maxval": number(),
    "value": number(), "gain": number(),
    "scale": number(above=0),
    "mode": one_of("fan_in", "fan_out", "fan_avg"),
    "distribution": one_of("truncated_normal", "untruncated_normal", "uniform", "normal"),
}


def initializer(value: Any) -> Any:
    """A Keras initializer name, or {name: random_normal, stddev: 0.05}."""
    if isinstance(value, str):
        name, kwargs = value, {}
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        name, kwargs = value["name"], {k: v for k, v in value.items() if k != "name"}
    else:
        raise ValueError(f"expected an initializer name or {{name: ..., ...}}, got {_describe(value)}")
    if name not in INITIALIZERS:
        raise ValueError(f"unknown initializer {name!r}; choose from {', '.join(INITIALIZERS)}")
    for key in kwargs:
        if key not in INITIALIZERS[name]:
            allowed = ", ".join(INITIALIZERS[name]) or "no arguments"
            raise ValueError(f"initializer {name!r} takes {allowed}; got {_describe(key)}")
        try:
            kwargs[key] = INITIALIZER_ARGUMENTS[key](kwargs[key])
        except ValueError as e:
            raise ValueError(f"initializer {name!r}: {key}: {e}") from None
    if name in ("random_uniform",) and kwargs.get("minval", -0.05) >= kwargs.get("maxval", 0.05):
        raise ValueError(f"initializer {name!r}: minval must be below maxval")
    return name if not kwargs else {"name": name, **dict(sorted(kwargs.items()))}


def bn_eval_modes(value: Any) -> list[str]:
    """A list of BN evaluation modes that includes moving, in the canonical order (so that
    [batch, moving] and [moving, batch] name the same run)."""
    modes = list_of(one_of(*BN_EVAL_MODES))(value)
    if len(set(modes)) != len(modes):
        raise ValueError(f"expected each mode once, got {_describe(value)}")
    if "moving" not in modes:
        raise ValueError("expected a list that includes moving (val_loss/val_accuracy always use "
                         f"the moving averages), e.g. [moving, precise]; got {_describe(value)}")
    return [mode for mode in BN_EVAL_MODES if mode in modes]


def seed_list(value: Any) -> list[int]:
    """Seeds from 0 to MAX_SEED, each once: a seed listed twice is the same run twice."""
    seeds = list_of(integer(minimum=0, maximum=MAX_SEED))(value)
    seen: set[int] = set()
    for seed in seeds:
        if seed in seen:
            raise ValueError(f"duplicate seed {seed}: each seed is one run; list it once")
        seen.add(seed)
    return seeds


def pack_mode(value: Any) -> str:
    """auto | off; YAML 1.1 reads a bare `off` as false, which means off too."""
    if value is False or value == "off":
        return "off"
    if value == "auto":
        return "auto"
    raise ValueError(f"expected auto or off, got {_describe(value)}")


def _mapping(value: Any, keys: dict[str, Check], example: str) -> dict[str, Any]:
    """A mapping with exactly `keys`, each value checked."""
    if not isinstance(value, dict) or set(value) != set(keys):
        raise ValueError(f"expected {example}, got {_describe(value)}")
    out = {}
    for key, check in keys.items():
        try:
            out[key] = check(value[key])
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    return out


def renorm_clipping(value: Any) -> dict[str, float]:
    """{rmax: >= 1, dmax: >= 0}."""
    return _mapping(value, {"rmax": number(minimum=1), "dmax": number(minimum=0)},
                    "{rmax: 3, dmax: 5}")


def noise_spec(value: Any) -> dict[str, float]:
    """{mean: >= 0, std: >= 0}, not both zero."""
    out = _mapping(value, {"mean": number(minimum=0), "std": number(minimum=0)},
                   "{mean: 0.5, std: 1.0} or null")
    if out["mean"] == 0 and out["std"] == 0:
        raise ValueError("mean and std are both 0: that is no noise; use null to turn it off")
    return out


# ---- the schema ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One config key."""

    default: Any
    help: str
    check: Check
    # Short name used in readable run ids when the key is swept or set on the command line.
    short: str | None = None
    # False for keys that change how fast a run trains but not what it learns: they stay out of the
    # run id, so switching them never retrains finished work.
    in_run_id: bool = True
    # The release that added the key. A key added after the first release enters the run-id hash
    # only when its value differs from its default, so results written before it existed keep
    # their run ids (and are skipped as finished) after an upgrade.
    added: int = 1


MODEL_KINDS = ("mlp", "cnn", "resmlp", "rescnn")
NORMS = ("none", "batch", "layer", "group", "rms", "renorm", "ghost")
RENORM_CLIPPING = {"rmax": 3.0, "dmax": 5.0}  # Ioffe 2017's final values
BN_EVAL_MODES = ("moving", "precise", "batch")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "gelu", "linear")
DATASETS = ("mnist", "fashion_mnist", "cifar10", "synthetic")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")

SCHEMA: dict[str, Option] = {
    "name": Option(None, "experiment name: results are written to <out>/<name>/ "
                   "(default: the config file's name)", optional(str)),
    # data
    "data.dataset": Option("mnist", "mnist | fashion_mnist | cifar10 | synthetic (small, for tests) "
                           '| your own: "package.module:function" or "file.py:function" (relative '
                           "to the config), called as function(params) and returning (x_train, "
                           "y_train, x_val, y_val) NumPy arrays with integer labels",
                           name_or_function(*DATASETS), short="data"),
    "data.validation": Option("test", '"test" (evaluate on the test split) or a fraction of the '
                              "training split held out, e.g. 0.1 (its last 10%, as Keras does)",
                              either("test", number(above=0, below=1), "a fraction between 0 and 1"),
                              short="val"),
    "data.train_limit": Option(None, "train on only the first N training examples (null: all)",
                               optional(integer(minimum=1)), short="n"),
    # model
    "model.kind": Option("mlp", "mlp | cnn | resmlp | rescnn (pre-activation residual versions: "
                         "a stem, then blocks of two hidden layers with a skip connection) | your "
                         'own: "package.module:function" or "file.py:function", called as '
                         "function(input_shape, num_classes, norm, params) and returning a Keras "
                         "model that outputs logits; norm() makes the run's normaliser layer",
                         name_or_function(*MODEL_KINDS), short="kind"),
    "model.depth": Option(2, "hidden layers (mlp, resmlp) or conv blocks (cnn, rescnn), at most "
                          f"{MAX_DEPTH}; residual networks have depth/2 blocks of two, so depth "
                          "must be even there", integer(minimum=1, maximum=MAX_DEPTH),
                          short="depth"),
    "model.width": Option(128, "units (mlp) or filters (cnn) per layer",
                          integer(minimum=1, maximum=MAX_WIDTH),
                          short="width"),
    "model.hidden": Option(None, "explicit per-layer sizes, e.g. [256, 128]; overrides depth/width",
                           optional(list_of(integer(minimum=1, maximum=MAX_WIDTH), maximum=MAX_DEPTH)),
                           short="hidden"),
    "model.activation": Option("relu", "relu | sigmoid | tanh | elu | gelu | linear",
                               one_of(*ACTIVATIONS), short="act"),
    "model.batch_norm": Option(False, "insert BatchNormalization in every hidden layer", boolean,
                               short="bn"),
    "model.norm": Option(None, "none | batch | layer | group | rms | renorm | ghost: the normaliser "
                         "in every hidden layer (null: batch if model.batch_norm, else none)",
                         optional(one_of(*NORMS)), short="norm", added=2),
    "model.groups": Option(32, "groups of GroupNorm (model.norm: group; Wu & He 2018 use 32); must "
                           "divide every layer's width", integer(minimum=1), short="groups",
                           added=2),
    "model.ghost_batch_size": Option(32, "examples per ghost batch (model.norm: ghost, Hoffer et "
                                     "al. 2017); must divide train.batch_size",
                                     integer(minimum=1), short="ghost", added=2),
    "model.renorm_clipping": Option(dict(RENORM_CLIPPING), "batch renorm's clipping (model.norm: "
                                    "renorm, Ioffe 2017): r in [1/rmax, rmax], d in [-dmax, dmax], "
                                    "constant from the first step", renorm_clipping,
                                    short="clip", added=2),
    "model.bn_noise": Option(None, "noisy BN (Santurkar et al. 2018): {mean: M, std: S} adds noise "
                             "after every normaliser at training time; each step each unit draws "
                             "a mean from U(-M, M) and a std from U(0, S), each example its own "
                             "N(mean, std^2) value (null: off)", optional(noise_spec),
                             short="noise", added=2),
    "model.skip_init": Option(False, "SkipInit (De & Smith 2020): a trainable scalar gain, zero at "
                              "the start, on each residual branch (resmlp, rescnn)", boolean,
                              short="skipinit", added=2),
    "model.bn_placement": Option("after_activation", "after_activation (as in Keras tutorials) | "
                                 "before_activation (Ioffe & Szegedy 2015: Dense without bias, BN, "
                                 "then the nonlinearity)",
                                 one_of("after_activation", "before_activation"), short="place"),
    "model.bn_momentum": Option(0.99, "BatchNormalization moving-average momentum",
                                number(minimum=0, below=1), short="bnmom"),
    "model.bn_epsilon": Option(0.001, "BatchNormalization epsilon", number(above=0), short="bneps"),
    "model.bn_variance": Option(
        "biased", "variance BN uses at inference: biased (Keras: the average of the biased batch "
        "variances) | unbiased (times m/(m-1), m = values per batch statistic: Ioffe & Szegedy "
        "2015, Algorithm 2; matters at batch sizes <= 8). Training is unchanged",
        one_of("biased", "unbiased"), short="bnvar", added=2),
    "model.init": Option("glorot_uniform", "Keras initializer for the weights: a name, or "
                         "{name: random_normal, stddev: 0.05}", initializer, short="init"),
    "model.dropout": Option(0.0, "dropout rate after every hidden layer (0: none)",
                            number(minimum=0, below=1), short="drop"),
    # train
    "train.optimizer": Option("adam", "sgd | momentum (SGD with momentum) | adam | rmsprop",
                              one_of(*OPTIMIZERS), short="opt"),
    "train.learning_rate": Option(0.001, "optimizer step size", number(above=0), short="lr"),
    "train.momentum": Option(0.9, "momentum of the `momentum` optimizer (ignored by the others)",
                             number(minimum=0, below=1), short="mom"),
    "train.weight_decay": Option(0.0, "decoupled weight decay applied by the optimizer (0: none)",
                                 number(minimum=0), short="wd"),
    "train.batch_size": Option(32, "examples per optimizer step (at most the training examples)",
                               integer(minimum=1, maximum=MAX_BATCH), short="bs"),
    "train.epochs": Option(5, "passes over the training data (ignored when steps is set)",
                           optional(integer(minimum=1, maximum=MAX_STEPS)), short="ep"),
    "train.steps": Option(None, f"total optimizer steps (at most {MAX_STEPS:,}); overrides "
                          "epochs when set", optional(integer(minimum=1, maximum=MAX_STEPS)),
                          short="steps"),
    "train.precision": Option("float32", "float32 | mixed_float16 | mixed_bfloat16: compute in "
                              "16 bits, keep weights in 32 (Keras mixed precision; helps on GPUs "
                              "with tensor cores, not on CPUs)",
                              one_of("float32", "mixed_float16", "mixed_bfloat16"), short="prec"),
    "train.seeds": Option([0], "one run per seed (weights init, batch order, dropout); plots "
                          "aggregate over seeds (each from 0 to 2**32 - 1, as NumPy and Keras take them)",
                          seed_list),
    # speed only: these never change what a run learns, so they stay out of run ids
    "train.steps_per_execution": Option(
        "auto", "optimizer steps per compiled call (auto: 128). Divergence checks and progress "
        "happen once per call, so a NaN loss is reported at the end of the call it occurred in",
        either("auto", integer(minimum=1), "a number of steps >= 1"), in_run_id=False),
    "train.jit_compile": Option(
        "auto", "compile training with XLA: auto (TensorFlow: off, so every path learns what the "
        "plain path learns bit for bit; JAX: always on) | true (TensorFlow: opt-in; XLA reorders "
        "float sums, so a BN run learns something slightly different, see docs/guide.md) | false",
        either("auto", boolean, "true or false"), in_run_id=False),
    "train.pack": Option(
        "auto", "auto: the planner groups runs for the backend's engine (TensorFlow: runs that "
        "share data, batch size, schedule and seed train together in one compiled loop; JAX: many "
        "runs as one vmapped program) and learn what they learn alone | off: one run at a time "
        "through Keras fit", pack_mode, in_run_id=False),
    # record
    "record.eval_every": Option("epoch", 'evaluate on the validation data every "epoch" or every N '
                                "optimizer steps (step-level curves)",
                                either("epoch", integer(minimum=1), "a number of steps >= 1"),
                                short="every"),
    "record.activations": Option(False, "record 15/50/85th percentiles of every hidden layer's "
                                 "pre-activation at each eval point", boolean),
    "record.gradients": Option(False, "record per-layer gradient L2 norms at each eval point",
                               boolean),
    "record.bn_eval": Option(
        ["moving"], "how BN layers are evaluated at each eval point, any of: moving (Keras's moving "
        "averages: val_loss/val_accuracy, always on) | precise (PreciseBN, Wu & Johnson 2021: "
        "population statistics re-estimated with the weights frozen: val_loss_precise, "
        "val_accuracy_precise) | batch (each validation batch of train.batch_size normalised with "
        "its own statistics, as in training: val_loss_batch, val_accuracy_batch)",
        bn_eval_modes, short="bneval", added=2),
    "record.precise_examples": Option(
        2048, "training examples PreciseBN averages over (the first N, in full batches of "
        "train.batch_size); Wu & Johnson 2021 find 10^3-10^4 enough for stable estimates",
        integer(minimum=1), short="precise", added=2),
    "record.train_eval": Option(
        0, "N > 0: evaluate the first N training examples in inference mode at each eval point "
        "(train_eval_loss, train_eval_accuracy: the generalisation gap without dropout or batch "
        "statistics) | 0: off", integer(minimum=0), short="traineval", added=2),
    "record.test": Option(False, "evaluate the test split once, at the end of training, with the "
                          "statistics val_loss uses (final.test_loss, final.test_accuracy); needs "
                          "data.validation a held-out fraction, so that settings chosen on validation "
                          "are reported on data nothing was chosen on", boolean, short="test",
                          added=3),
    "record.tensorboard": Option(False, "write TensorBoard event files into each run directory",
                                 boolean, in_run_id=False),
    "record.eval_at_start": Option(False, "an eval point at step 0, before any training (curves "
                                   "start from the untrained model; instruments measure it too)",
                                   boolean, added=2),
    "record.keep_checkpoint": Option(False, "keep the last checkpoint of a finished run (a run "
                                     "checkpoints at every eval point, so a killed run resumes "
                                     "there; the checkpoint is deleted when the run ends)", boolean,
                                     in_run_id=False, added=3),
    "record.landscape": Option(False, "Santurkar et al. 2018 loss-landscape probes at each eval "
                               "point: loss band, gradient predictiveness and effective "
                               "beta-smoothness along the gradient (costs 1 + len(landscape_factors) "
                               "gradient evaluations per eval point)", boolean, added=2),
    "record.landscape_factors": Option([0.5, 1.0, 2.0, 4.0], "the landscape probes' step sizes, as "
                                       f"multiples of train.learning_rate (at most {MAX_FACTORS})",
                                       list_of(number(above=0), maximum=MAX_FACTORS), added=2),
    "record.ics": Option(False, "Santurkar et al. 2018 internal covariate shift (Def. 2.1) of each "
                         "weight layer at each eval point: l2 distance and cosine between its "
                         "gradient before and after the preceding layers' update", boolean, added=2),
}

SECTIONS = ("data", "model", "train", "record")
# Top-level keys that are not plain options.
STRUCTURE_KEYS = ("variants", "sweep")
# What they accept and mean, in the words docs/config-reference.md prints (scripts/config_reference.py
# reads them here, so that the schema stays the one source of every key's documentation).
STRUCTURE_HELP = {
    "variants": ("a mapping: variant name (letters, digits, _ and .) -> {dotted key: value}",
                 "the named variants compared in every plot and table, each a set of overrides of the "
                 "keys above; --variants A,B trains only some of them"),
    "sweep": ("a mapping: dotted key -> non-empty list of values",
              "sweep axes: every combination of their values, crossed with the variants and "
              "train.seeds; --sweep KEY=V1,V2 adds or replaces an axis from the command line"),
}

DEFAULT_VARIANTS = {"no_bn": {"model.batch_norm": False}, "bn": {"model.batch_norm": True}}
