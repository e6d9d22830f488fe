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


# ---- value checks ------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, bool) else str(value).lower()


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {_describe(value)}")


def integer(minimum: int | None = None) -> Check:
    def check(value: Any) -> int:
        # bool is a subclass of int in Python; `depth: true` is a typo, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValueError(f"expected an integer{_bound(minimum)}, got {_describe(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"expected an integer{_bound(minimum)}, got {value}")
        return value

    return check


def number(minimum: float | None = None, *, above: float | None = None,
           maximum: float | None = None, below: float | None = None) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string; accept what the user obviously meant.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"expected a number{limits}, got {_describe(value)}")
        value = float(value)
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


def list_of(inner: Check, *, non_empty: bool = True) -> Check:
    def check(value: Any) -> list:
        if not isinstance(value, list) or (non_empty and not value):
            raise ValueError(f"expected a {'non-empty ' if non_empty else ''}list, got {_describe(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(inner(item))
            except ValueError as e:
                raise ValueError(f"item {i + 1}: {e}") from None
        return out

    return check


def _bound(minimum: int | None) -> str:
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
            raise ValueError(f"initializer {name!r} takes {allowed}; got {key!r}")
        if key not in ("mode", "distribution"):
            kwargs[key] = number()(kwargs[key])
    return name if not kwargs else {"name": name, **dict(sorted(kwargs.items()))}


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
ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "gelu", "linear")
DATASETS = ("mnist", "fashion_mnist", "cifar10", "synthetic")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")

SCHEMA: dict[str, Option] = {
    "name": Option(None, "experiment name: results are written to <out>/<name>/ "
                   "(default: the config file's name)", optional(str)),
    # data
    "data.dataset": Option("mnist", "mnist | fashion_mnist | cifar10 | synthetic (small, for tests)",
                           one_of(*DATASETS), short="data"),
    "data.validation": Option("test", '"test" (evaluate on the test split) or a fraction of the '
                              "training split held out, e.g. 0.1 (its last 10%, as Keras does)",
                              either("test", number(above=0, below=1), "a fraction between 0 and 1"),
                              short="val"),
    "data.train_limit": Option(None, "train on only the first N training examples (null: all)",
                               optional(integer(minimum=1)), short="n"),
    # model
    "model.kind": Option("mlp", "mlp | cnn | resmlp | rescnn (pre-activation residual versions: "
                         "a stem, then blocks of two hidden layers with a skip connection)",
                         one_of(*MODEL_KINDS), short="kind"),
    "model.depth": Option(2, "hidden layers (mlp, resmlp) or conv blocks (cnn, rescnn); residual "
                          "networks have depth/2 blocks of two, so depth must be even there",
                          integer(minimum=1), short="depth"),
    "model.width": Option(128, "units (mlp) or filters (cnn) per layer", integer(minimum=1),
                          short="width"),
    "model.hidden": Option(None, "explicit per-layer sizes, e.g. [256, 128]; overrides depth/width",
                           optional(list_of(integer(minimum=1))), short="hidden"),
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
    "train.batch_size": Option(32, "examples per optimizer step", integer(minimum=1), short="bs"),
    "train.epochs": Option(5, "passes over the training data (ignored when steps is set)",
                           optional(integer(minimum=1)), short="ep"),
    "train.steps": Option(None, "total optimizer steps; overrides epochs when set",
                          optional(integer(minimum=1)), short="steps"),
    "train.precision": Option("float32", "float32 | mixed_float16 | mixed_bfloat16: compute in "
                              "16 bits, keep weights in 32 (Keras mixed precision; helps on GPUs "
                              "with tensor cores, not on CPUs)",
                              one_of("float32", "mixed_float16", "mixed_bfloat16"), short="prec"),
    "train.seeds": Option([0], "one run per seed (weights init, batch order, dropout); plots "
                          "aggregate over seeds", list_of(integer(minimum=0))),
    # speed only: these never change what a run learns, so they stay out of run ids
    "train.steps_per_execution": Option(
        "auto", "optimizer steps per compiled call (auto: 128). Divergence checks and progress "
        "happen once per call, so a NaN loss is reported at the end of the call it occurred in",
        either("auto", integer(minimum=1), "a number of steps >= 1"), in_run_id=False),
    "train.jit_compile": Option(
        "auto", "compile training with XLA: auto (on, measured 2x faster on CPU; off for models "
        "with dropout, whose random masks XLA would draw differently) | true | false",
        either("auto", boolean, "true or false"), in_run_id=False),
    "train.pack": Option(
        "auto", "auto: runs of one invocation that share data, batch size, schedule and seed train "
        "together in one compiled step on identical batches (TensorFlow backend; runs recording "
        "activations, gradients or TensorBoard train alone) | off: one run after another",
        pack_mode, in_run_id=False),
    # record
    "record.eval_every": Option("epoch", 'evaluate on the validation data every "epoch" or every N '
                                "optimizer steps (step-level curves)",
                                either("epoch", integer(minimum=1), "a number of steps >= 1"),
                                short="every"),
    "record.activations": Option(False, "record 15/50/85th percentiles of every hidden layer's "
                                 "pre-activation at each eval point", boolean),
    "record.gradients": Option(False, "record per-layer gradient L2 norms at each eval point",
                               boolean),
    "record.tensorboard": Option(False, "write TensorBoard event files into each run directory",
                                 boolean, in_run_id=False),
}

SECTIONS = ("data", "model", "train", "record")
# Top-level keys that are not plain options.
STRUCTURE_KEYS = ("variants", "sweep")

DEFAULT_VARIANTS = {"no_bn": {"model.batch_norm": False}, "bn": {"model.batch_norm": True}}
