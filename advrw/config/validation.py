"""Every config value a run could reject, checked on the composed config before any work.

Each check raises ``AdvrwError`` with one line: the key, the bad value, what is allowed. Most
checks are rows of declarative tables (``TRAIN_RULES``, ``EVAL_RULES``, ``SCHEME_RULES``,
``DEFENSE_RULES``); relations between keys (burn-in < epochs, milestones inside the schedule,
validation.n <= val_size) are spelled out below them.

Hooks for new keys: write ``validate_<thing>(cfg)`` in your module and add one call to
:func:`validate_train` (or :func:`validate_eval`); :func:`check` and the rule constructors
(:func:`number`, :func:`integer`, :func:`boolean`, :func:`choice`) are there to reuse.
:func:`preflight` checks files (data, checkpoints) for the command-line precheck.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from advrw.attacks.fat import validate_attack
from advrw.attacks import audit, registry
from advrw.attacks.engine import BN_MODES, INITS, check_budget
from advrw.methods.awp import validate_minimizer
from advrw.methods.ema import validate_ema
from advrw.data.mixed import validate_extra
from advrw.data.subsets import RULES as SUBSET_RULES
from advrw.config import resume as resume_cfg
from advrw.core import checkpoints as ckpt_io
from advrw.core.errors import AdvrwError
from advrw.core.hardware import resolve_device, validate_runtime
from advrw.core.keys import CHECKPOINT_CHOICES, as_list, validate_checkpoint_choice
from advrw.methods.weighting import COMBINES, CONTROL_KEYS, SCHEMES
from advrw.methods import defenses
from advrw.methods.defenses import DEFENSES
from advrw.data import DATASET_NAMES
from advrw.models import MODEL_NAMES, validate_model, zoo
from advrw.data.checks import check_data_files
from advrw.attacks.registry import selected_attacks

ATTACK_LOSSES = ("auto", "ce", "kl", "cw", "scaled_ce")
_ABSENT = object()

Rule = Callable[[str, Any], None]


# ----------------------------------------------------------------------------------- rule makers


def show(value: Any) -> str:
    """How a value appears in a message: strings quoted, numbers and lists as typed."""
    return repr(value) if isinstance(value, str) else str(value)


def suggest(word: str, candidates) -> str:
    """`` (did you mean X?)`` for the closest candidate, else ``''``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _bounds(gt=None, ge=None, lt=None, le=None) -> str:
    parts = [f"> {gt}" if gt is not None else "", f">= {ge}" if ge is not None else "",
             f"< {lt}" if lt is not None else "", f"<= {le}" if le is not None else ""]
    return " and ".join(p for p in parts if p)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(*, gt=None, ge=None, lt=None, le=None, null=False, integer=False) -> Rule:
    """A finite number (an int with ``integer``) inside the bounds; None only with ``null``."""
    what = ("an integer" if integer else "a finite number")
    bounds = _bounds(gt, ge, lt, le)
    allowed = what + (f" {bounds}" if bounds else "") + (" or null" if null else "")

    def rule(key, v):
        if v is None and null:
            return
        typed = isinstance(v, int) and not isinstance(v, bool) if integer else _is_number(v) and math.isfinite(v)
        if not typed:
            raise AdvrwError(f"{key}={show(v)} is invalid: must be {allowed}")
        if not ((gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt)
                and (le is None or v <= le)):  # the right type, out of range: the bounds say it
            raise AdvrwError(f"{key}={show(v)} is invalid: must be {allowed if integer else bounds}")
    return rule


def integer(**bounds) -> Rule:
    return number(integer=True, **bounds)


def boolean(null=False) -> Rule:
    def rule(key, v):
        if not (isinstance(v, bool) or (null and v is None)):
            raise AdvrwError(f"{key}={show(v)} is invalid: must be true or false" + (" or null" if null else ""))
    return rule


def choice(*options) -> Rule:
    def rule(key, v):
        if not isinstance(v, (str, type(None))) or v not in options:
            raise AdvrwError(f"{key}={show(v)} is unknown: choose one of {', '.join(map(str, options))}"
                             + (suggest(v, options) if isinstance(v, str) else ""))
    return rule


def numbers(**bounds) -> Rule:
    """A number or a list of numbers (e.g. eval.alpha_test), each checked like ``number``."""
    one = number(**bounds)

    def rule(key, v):
        if OmegaConf.is_list(v) or isinstance(v, (list, tuple)):
            for x in v:
                one(key, x)
        elif v is not None:
            one(key, v)
    return rule


def value(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at the dotted ``key`` (``_ABSENT`` when missing); unresolvable -> one line."""
    try:
        v = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except Exception as err:  # an interpolation that does not resolve, a ??? value
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AdvrwError(f"{key} cannot be read: {first}") from None
    return v


def check(cfg: DictConfig, rules, prefix: str = "") -> None:
    """Apply ``[(key, rule), ...]`` to ``cfg``; keys missing from ``cfg`` are skipped."""
    for key, rule in rules:
        v = value(cfg, key)
        if v is not _ABSENT:
            rule(prefix + key, v)


# ----------------------------------------------------------------------------------- the tables

TRAIN_RULES = [
    ("seed", integer(ge=0)),
    ("deterministic", boolean()),
    ("progress", boolean()),
    ("checkpoint_every", integer(ge=1)),
    ("stop_after", integer(ge=1, null=True)),
    ("schedule.epochs", integer(ge=1)),
    ("schedule.batch_size", integer(ge=1)),
    ("schedule.eval_batch_size", integer(ge=1)),
    ("schedule.optimizer", choice("sgd")),
    ("schedule.lr", number(gt=0)),
    ("schedule.momentum", number(ge=0, lt=1)),
    ("schedule.nesterov", boolean()),
    ("schedule.weight_decay", number(ge=0)),
    ("schedule.lr_schedule", choice("piecewise", "cosine", "warmup_cosine", "one_cycle")),
    ("schedule.step_per", choice("epoch", "iteration")),
    ("schedule.warmup", number(ge=0)),
    ("schedule.warmup_in", choice("epochs", "fraction")),
    ("schedule.lr_scaling", choice("none", "linear")),
    ("schedule.clip_grad_norm", number(gt=0, null=True)),
    ("schedule.one_cycle.pct_start", number(gt=0, lt=1)),
    ("schedule.one_cycle.div_factor", number(gt=0)),
    ("schedule.one_cycle.final_div_factor", number(gt=0)),
    ("schedule.one_cycle.cycle_momentum", boolean()),
    ("schedule.one_cycle.base_momentum", number(ge=0, lt=1)),
    ("schedule.one_cycle.max_momentum", number(ge=0, lt=1)),
    ("schedule.lr_gamma", number(gt=0, le=1)),
    ("schedule.burn_in", integer(ge=0)),
    ("attack.eps", number(gt=0)),
    ("attack.step", number(gt=0)),
    ("attack.steps", integer(ge=1)),
    ("attack.init", choice(*INITS)),
    ("attack.bn_mode", choice(*BN_MODES)),
    ("attack.loss", choice(*ATTACK_LOSSES)),
    ("attack.weighted", boolean()),
    ("weighting.detach", boolean()),
    ("weighting.burn_in", integer(ge=0)),
    ("validation.steps", integer(ge=1)),
    ("validation.step", number(gt=0)),
    ("validation.n", integer(ge=1, null=True)),
]

DATASET_RULES = [
    ("val_size", integer(ge=0)),
    ("split_seed", integer(ge=0)),
    ("n_train", integer(ge=1, null=True)),
    ("n_test", integer(ge=1, null=True)),
    ("subset", choice(*SUBSET_RULES)),
    ("augment", boolean(null=True)),
    ("normalize", boolean()),
    ("download", boolean()),
    ("num_classes", integer(ge=2, null=True)),
    ("channels", integer(ge=1)),
    ("image_size", integer(ge=1)),
    ("seed", integer(ge=0)),
    ("decode_workers", integer(ge=1, null=True)),
]

EVAL_RULES = [
    ("eps", number(gt=0)),
    ("batch_size", integer(ge=1)),
    ("n_eval", integer(ge=1, null=True)),
    ("subset", choice(*SUBSET_RULES)),
    ("seed", integer(ge=0)),
    ("checkpoint", choice(*CHECKPOINT_CHOICES)),
    ("alpha_test", numbers(ge=0)),
    ("rho", numbers(ge=0)),
    ("plots", boolean()),
]

# The formula's hyperparameters per scheme (keys are checked against the function's signature too).
SCHEME_RULES = {
    "none": [],
    "gairat": [("lam", number()), ("normalize", boolean())],
    "mail": [("gamma", number(gt=0)), ("beta", number()), ("pm", choice("adv", "nat", "dif")),
             ("normalize", choice("batch", "scale", "none")), ("scale", number(gt=0))],
    "vir": [("alpha", number(gt=0)), ("gamma", number(ge=0)), ("beta", number(ge=0)),
            ("factors", choice("both", "sv", "sd"))],
    "ewat": [("tau", number(gt=0))],
    "margin_exp": [("alpha", number(ge=0))],
}

DEFENSE_RULES = {
    "at": [("label_smoothing", number(ge=0, lt=1))],
    "trades": [("beta_trades", number(ge=0)), ("detach_nat", boolean()), ("label_smoothing", number(ge=0, lt=1))],
    "mart": [("lambda_mart", number(ge=0)), ("detach_nat", boolean()), ("label_smoothing", number(ge=0, lt=1))],
}

# ----------------------------------------------------------------------------------- validators


def validate_scheme(cfg: DictConfig) -> None:
    """weighting.*: the scheme, its wiring and every hyperparameter, now rather than when burn-in ends."""
    w = cfg.weighting
    check(cfg, [("weighting.name", choice(*SCHEMES)), ("weighting.combine", choice(*COMBINES))])
    fn = SCHEMES[w.name]
    params = [p for p in inspect.signature(fn).parameters if p not in ("z_nat", "z_adv", "y", "kappa")]
    for key in w:
        if key not in CONTROL_KEYS and key != "burn_in" and key not in params:
            raise AdvrwError(f"weighting.{key} is not a hyperparameter of weighting={w.name}: it has "
                             f"{', '.join(params) or 'no hyperparameters'}{suggest(key, params)}")
    check(w, SCHEME_RULES.get(str(w.name), []), prefix="weighting.")


def validate_defense(cfg: DictConfig) -> None:
    check(cfg, [("defense.name", choice(*DEFENSES)), ("defense.attack_init", choice(*INITS))])
    # the loss takes **_ (shared call site): a misspelled +defense.key would be silently ignored
    fn = getattr(defenses, "_LOSSES", {}).get(str(cfg.defense.name))
    if fn is not None:
        params = [n for n, p in inspect.signature(fn).parameters.items()
                  if p.kind is p.KEYWORD_ONLY and n != "combine"]
        for key in cfg.defense:
            if key != "name" and not str(key).startswith("attack_") and key not in params:
                raise AdvrwError(f"defense.{key} is not a setting of defense={cfg.defense.name}: it has "
                                 f"{', '.join(params) or 'none'}{suggest(key, params)}")
    check(cfg.defense, DEFENSE_RULES.get(str(cfg.defense.name), []), prefix="defense.")


def validate_schedule(cfg: DictConfig) -> None:
    s = cfg.schedule
    if s.burn_in >= s.epochs:
        raise AdvrwError(f"schedule.burn_in={s.burn_in} is invalid: must be >= 0 and < schedule.epochs ({s.epochs})")
    for kind in as_list(s.get("wd_exclude")):
        if kind not in ("bn", "bias"):
            raise AdvrwError(f"schedule.wd_exclude={show(as_list(s.wd_exclude))} is invalid: "
                             "must list some of bn, bias")
    warm = s.get("warmup") or 0
    if s.get("warmup_in") == "fraction" and warm >= 1:
        raise AdvrwError(f"schedule.warmup={warm} is invalid with schedule.warmup_in=fraction: must be < 1")
    if s.get("warmup_in", "epochs") == "epochs" and warm >= s.epochs and s.lr_schedule == "warmup_cosine":
        raise AdvrwError(f"schedule.warmup={warm} is invalid: must be < schedule.epochs ({s.epochs})")
    if s.nesterov and s.momentum == 0:
        raise AdvrwError("schedule.nesterov=true is invalid with schedule.momentum=0: set a momentum > 0")
    if s.lr_schedule == "piecewise":
        ms = value(cfg, "schedule.milestones")
        ok = (OmegaConf.is_list(ms) or isinstance(ms, (list, tuple))) and all(
            isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= s.epochs for m in ms) \
            and all(a < b for a, b in zip(list(ms), list(ms)[1:]))
        if not ok:
            raise AdvrwError(f"schedule.milestones={show(OmegaConf.to_object(ms) if OmegaConf.is_list(ms) else ms)} "
                             f"is invalid: must be a list of increasing integers in 1..schedule.epochs ({s.epochs})")


def validate_dataset(cfg: DictConfig) -> None:
    check(cfg, [("dataset.name", choice(*DATASET_NAMES))])
    check(cfg.dataset, DATASET_RULES, prefix="dataset.")
    d = cfg.dataset
    if d.get("channels") not in (None, 1, 3):
        raise AdvrwError(f"dataset.channels={d.channels} is invalid: must be 1 or 3")
    if d.get("n_train") is not None and d.val_size >= d.n_train:
        raise AdvrwError(f"dataset.val_size={d.val_size} is invalid: must be < dataset.n_train={d.n_train} "
                         "(the validation split is taken from the training set)")


def validate_eval(cfg: DictConfig) -> None:
    """The evaluation suite's inputs: attack names and budgets, alpha_test, rho, n_eval, subset."""
    check(cfg.eval, EVAL_RULES, prefix="eval.")
    ev = cfg.eval
    for name, spec in (ev.attacks or {}).items():
        registry.validate(f"eval.attacks.{name}", spec, ev.eps)  # each kind's rules (advrw/attacks/registry.py)
    if ev.get("only") is not None and not as_list(ev.only):
        raise AdvrwError(f"eval.only=[] is invalid: name at least one attack of eval={ev.name} "
                         f"({', '.join(ev.attacks or {})}) or set eval.only=null for all of them")
    audit.validate(ev)  # eval.audit / eval.audit_settings (advrw/attacks/audit.py)
    for name in as_list(ev.get("only")):
        if name not in (ev.attacks or {}):
            raise AdvrwError(f"eval.only names attack {name!r}, which eval={ev.name} does not have: "
                             f"choose from {', '.join(ev.attacks or {})}{suggest(name, ev.attacks or {})}")
    chosen = selected_attacks(ev)
    if (as_list(ev.alpha_test) or as_list(ev.rho)) and ev.nonuniform_attack not in chosen:
        raise AdvrwError(f"eval.nonuniform_attack={ev.nonuniform_attack!r} is not one of the attacks to run "
                         f"({', '.join(chosen) or 'none'}): the non-uniform metrics need it")


def validate_train(cfg: DictConfig) -> None:
    """Everything a training run could reject, checked before any work."""
    validate_dataset(cfg)
    check(cfg, [("model.name", choice(*MODEL_NAMES))])
    validate_model(cfg)  # activation / bn_momentum (advrw.models)
    validate_defense(cfg)
    validate_scheme(cfg)
    check(cfg, TRAIN_RULES)
    a = cfg.attack
    check_budget(a.eps, a.step, a.steps, a.init, a.bn_mode, prefix="attack")
    validate_attack(cfg)  # FAT / clamp_start / GAIRAT half_steps keys
    if a.weighted and a.get("loss", "auto") not in ("auto", "ce", "kl"):
        raise AdvrwError(f"attack.loss={a.loss} cannot be combined with attack.weighted=true: choose auto, ce or kl")
    if a.weighted:
        check(cfg, [("attack.alpha", number(ge=0))])
    validate_schedule(cfg)
    # the per-epoch validation attack uses attack.eps: report its own keys, not attack.*
    check_budget(a.eps, cfg.validation.step, cfg.validation.steps, prefix="validation")
    n_train, bs = cfg.dataset.get("n_train"), cfg.schedule.batch_size
    if isinstance(n_train, int) and bs > n_train - int(cfg.dataset.val_size or 0):
        raise AdvrwError(f"schedule.batch_size={bs} is invalid: must be in 1..{n_train - int(cfg.dataset.val_size or 0)}"
                         f", the training set's size (dataset.n_train={n_train} minus dataset.val_size)")
    n_val = cfg.validation.get("n")
    if n_val is not None and cfg.dataset.val_size and n_val > cfg.dataset.val_size:
        raise AdvrwError(f"validation.n={n_val} is invalid: must be <= dataset.val_size ({cfg.dataset.val_size})")
    n_eval, n_test = cfg.eval.get("n_eval"), cfg.dataset.get("n_test")
    if n_eval is not None and n_test is not None and n_eval > n_test:
        raise AdvrwError(f"eval.n_eval={n_eval} is invalid: must be <= dataset.n_test ({n_test}), the test set's size")
    check(cfg, [("logger.name", choice("wandb", "none"))])
    validate_checkpoint_choice(cfg)  # best / both need a validation split
    validate_runtime(cfg)  # precision, channels_last, compile (advrw.core.hardware)
    resolve_device(cfg.device)
    validate_minimizer(cfg)
    validate_ema(cfg)
    validate_extra(cfg)
    validate_eval(cfg)
    resolves(cfg)


def resolves(cfg: DictConfig) -> None:
    """Resolving every interpolation turns a typo'd ${...} into an error now, not at epoch 75."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # omegaconf raises several types; one line is what matters
        raise AdvrwError(f"config does not resolve: {str(err).splitlines()[0]}") from None


# ----------------------------------------------------------------------------------- files


def preflight(config_name: str, cfg: DictConfig) -> None:
    """File checks of the command-line precheck: data set files, the checkpoint to resume or evaluate."""
    if config_name == "train":
        if cfg.get("resume"):
            resume_cfg.training_checkpoint(cfg, mmap=True)
            return  # the data set is the checkpoint's: checked when it is read
        check_data_files(cfg.dataset)  # advrw.data.checks: files and npz contents
    elif config_name == "eval" and not OmegaConf.is_missing(cfg, "ckpt"):
        if zoo.is_zoo(cfg.ckpt):  # RobustBench's layout, offline (advrw/models/zoo.py)
            p = zoo.zoo_path(cfg.ckpt, cfg.robustbench)
            if not p.is_file():
                raise AdvrwError(zoo.missing_message(cfg.ckpt, p, cfg.robustbench))
            ckpt_io.read(p, trust=bool(cfg.get("ckpt_trust", False)), key="ckpt", mmap=True)
            return
        kind = cfg.eval.checkpoint if cfg.eval.checkpoint in ("last", "best") else "last"
        for k in ([kind] if cfg.eval.checkpoint != "both" else ["best", "last"]):
            path = ckpt_io.resolve(cfg.ckpt, k, key="ckpt")
            ckpt_io.read(path, trust=bool(cfg.get("ckpt_trust", False)), key="ckpt", mmap=True)
