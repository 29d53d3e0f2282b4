"""The evaluation suite: clean accuracy, every configured attack, the non-uniform metrics.

``run_suite`` is what ``python -m advrw.eval`` and the end of ``python -m advrw.train`` both
call. Every number it returns sits next to its protocol (attack, eps, steps, step, restarts,
n_eval, seed). Attacks only spend effort on examples the model still gets right (AutoAttack's
cascade; a misclassified clean example is non-robust under any attack), except the attack behind
the non-uniform metrics, whose weights normalise over the whole evaluated set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm import tqdm

from advrw.attacks import fgsm, model_mode, pgd, registry
from advrw.attacks.registry import selected_attacks
from advrw.core.keys import as_list
from advrw.attacks import audit
from advrw.evaluation import metrics
from advrw.records.audit_verdict import verdict_text

log = logging.getLogger(__name__)


@dataclass
class AttackOutput:
    logits: torch.Tensor  # logits of the adversarial inputs [N, C] (clean logits where not attacked)
    robust: torch.Tensor  # bool [N]
    protocol: dict
    extra: dict


def _generator(device, seed):
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


@torch.no_grad()
def predict(model, x, batch_size):
    with model_mode(model, False):
        return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])


def white_box(model, x, y, spec, eps, *, batch_size, seed, only=None, desc="attack", progress=True,
              clean_logits=None):
    """FGSM / PGD-k from the shared engine, batched; returns adversarial logits for all of x.

    ``only`` (bool [N]) restricts the work to those examples; the others keep clean logits
    (pass ``clean_logits`` when the caller has them, to skip that forward).
    """
    n = len(x)
    proto = {**registry.white_box_protocol(spec, eps), "n_eval": n, "seed": seed}
    logits = (predict(model, x, batch_size) if clean_logits is None else clean_logits).clone()
    idx = torch.arange(n, device=x.device) if only is None else only.nonzero().squeeze(1)
    gen = _generator(x.device, seed)
    for start in tqdm(range(0, len(idx), batch_size), desc=desc, disable=not progress, leave=False):
        b = idx[start:start + batch_size]
        if proto["attack"] == "fgsm":
            res = fgsm(model, x[b], y[b], eps=eps, final_logits=True)
        else:
            res = pgd(model, x[b], y[b], eps=eps, step=proto["step"], steps=proto["steps"], init=proto["init"],
                      objective=proto["objective"], alpha=proto.get("alpha", 1.0), scale=proto.get("scale", 10.0),
                      restarts=proto["restarts"], eot=proto.get("eot", 1), generator=gen, final_logits=True)
        logits[b] = res.logits
    return AttackOutput(logits, logits.argmax(1) == y, proto, {})


def black_box(model, x, y, spec, eps, *, batch_size, seed, only, desc, progress=True, clean_logits=None):
    """A library attack of the registry (AutoAttack, APGD-CE, MDE, Square, SPSA, FMN).

    Runs on the still-robust examples in chunks of ``batch_size`` (one tqdm step each); the
    libraries' per-attack accuracies are combined weighted by chunk size.
    """
    kind, spec = registry.resolve(spec)
    idx = only.nonzero().squeeze(1)
    logits = (predict(model, x, batch_size) if clean_logits is None else clean_logits).clone()
    robust = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    per_attack: dict = {}
    warnings: list[str] = []
    proto: dict = {}
    log.info("%s on %d still-robust examples", desc, len(idx))
    for start in tqdm(range(0, len(idx), batch_size), desc=desc, disable=not progress, leave=False):
        b = idx[start:start + batch_size]
        res = kind.run(model, x[b], y[b], spec, eps, batch_size=batch_size, seed=seed)
        logits[b] = predict(model, res.x_adv, batch_size)
        robust[b] = res.robust
        proto = dict(res.protocol)
        for name, acc in getattr(res, "per_attack", {}).items():  # fractions of the chunk -> counts
            per_attack[name] = per_attack.get(name, 0.0) + float(acc) * len(b)
        warnings += [w for w in getattr(res, "warnings", []) if w not in warnings]
    for w in warnings:
        log.warning("%s sanity check: %s", desc, w)
    if kind.trim is not None and proto:
        proto = kind.trim(proto)
    proto.update({"attack": kind.name, "eps": eps, "n_eval": len(x), "n_attacked": len(idx), "seed": seed})
    proto.pop("n", None)
    extra = {}
    if kind.cascade:
        # robust accuracy over the whole evaluated set after each stage of the cascade
        extra = {"per_attack": {k: v / len(x) for k, v in per_attack.items()}, "warnings": warnings}
    return AttackOutput(logits, robust, proto, extra)


def _class_report(pred, y, num_classes):
    return {"per_class": metrics.per_class_accuracy(pred, y, num_classes).tolist(),
            "confusion": metrics.confusion_matrix(pred, y, num_classes).tolist()}


def _key(value) -> str:
    """JSON keys for alpha_test / rho: ``1`` and ``1.0`` from the command line are the same."""
    return str(float(value))


def nonuniform_report(model, x, y, base_logits, base_protocol, eps, alphas, rhos, *, batch_size, seed, progress):
    """Zeng et al.: A_rob, and per alpha_test A_sa (unweighted PGD) and A_tr (weighted PGD).

    ``base_logits`` come from the configured column's own run (one PGD per row): A_rob is that
    column's robust accuracy, and ``attack`` is its protocol."""
    out = {"attack": dict(base_protocol), "A_rob": metrics.accuracy(base_logits, y), "alpha_test": {}, "dro": {},
           "weights": {}}
    spec = {k: v for k, v in base_protocol.items() if k in ("steps", "step", "restarts", "init")}
    spec = {"objective": "ce", "restarts": 1, "init": "uniform", **spec, "kind": "pgd"}
    if base_protocol["attack"] == "fgsm":
        spec.update(steps=1, step=eps, init="none")
    for a in alphas:
        weighted = dict(spec, objective="weighted_ce", alpha=float(a))
        tr = white_box(model, x, y, weighted, eps, batch_size=batch_size, seed=seed,
                       desc=f"weighted PGD a={a}", progress=progress, clean_logits=base_logits)
        out["alpha_test"][_key(a)] = {
            "A_sa": metrics.nonuniform_accuracy(base_logits, y, float(a)),
            "A_tr": metrics.nonuniform_accuracy(tr.logits, y, float(a)),
            "weighted_attack": tr.protocol,
        }
        out["weights"][float(a)] = metrics.nonuniform_weights(base_logits, y, float(a)).cpu()
    losses = torch.nn.functional.cross_entropy(base_logits, y, reduction="none")
    correct = base_logits.argmax(1) == y
    for r in rhos:
        out["dro"][_key(r)] = metrics.chi2_dro(losses, correct, float(r))
    return out


def _attack(model, x, y, name, spec, eps, *, bs, seed, progress, clean_logits, clean_correct, full):
    """One column. ``full``: attack every example (the non-uniform metrics' weights need the whole
    set); the clean point is kept wherever it already fools the model (a valid break at delta 0),
    so the column's robust accuracy and A_rob are the same number."""
    kind, _ = registry.resolve(spec)
    if kind.white_box:
        out = white_box(model, x, y, spec, eps, batch_size=bs, seed=seed, only=None if full else clean_correct,
                        desc=name, progress=progress, clean_logits=clean_logits)
    else:
        out = black_box(model, x, y, spec, eps, batch_size=bs, seed=seed, only=clean_correct, desc=name,
                        progress=progress, clean_logits=clean_logits)
    keep_clean = ~clean_correct & (out.logits.argmax(1) == y)
    out.logits[keep_clean] = clean_logits[keep_clean]
    out.robust = out.robust & clean_correct
    return out


def _attack_record(out: AttackOutput, y, num_classes, base: bool) -> dict:
    """What a finished column leaves for the rest of the suite (and for a resumed run)."""
    entry = {"robust_accuracy": out.robust.float().mean().item(), "protocol": out.protocol,
             **_class_report(out.logits.argmax(1), y, num_classes), **out.extra}
    if out.protocol.get("attack") in ("pgd", "fgsm"):
        entry["high_entropy_share"] = metrics.high_entropy_share(out.logits)
    rec = {"entry": entry, "robust": out.robust.tolist()}
    if base:
        rec["logits"] = out.logits.tolist()
    return rec


def run_suite(model, x, y, ev, *, num_classes, progress=True, done=None, on_unit=None) -> tuple[dict, dict]:
    """Evaluate ``model`` on ``(x, y)`` (float [0,1], on the model's device) with config ``ev``.

    Returns ``(results, arrays)``: ``results`` is JSON-ready (numbers with protocols);
    ``arrays`` holds the tensors behind the figures (entropies, normalised weights, confusion).
    Each attack (and the non-uniform metrics) is a unit: ``done`` maps unit names to records a
    previous, interrupted run finished (they are not run again); ``on_unit(name, record)`` is
    called after each unit this call runs. Every unit is seeded by itself, so a resumed
    evaluation gives the same numbers as an uninterrupted one.
    """
    done = dict(done or {})
    n, eps, seed, bs = len(x), float(ev["eps"]), int(ev["seed"]), int(ev["batch_size"])
    clean_logits = predict(model, x, bs)
    clean_correct = clean_logits.argmax(1) == y
    results = {"protocol": {"n_eval": n, "eps": eps, "seed": seed, "precision": "fp32"},
               "clean": {"accuracy": clean_correct.float().mean().item(),
                         **_class_report(clean_logits.argmax(1), y, num_classes)},
               "attacks": {}}
    arrays = {"clean_per_class": results["clean"]["per_class"], "robust_per_class": {}, "confusion": {}}
    robust_all = clean_correct.clone()
    base_name = ev.get("nonuniform_attack")
    alphas, rhos = as_list(ev.get("alpha_test")), as_list(ev.get("rho"))
    base_logits = None
    for name, spec in selected_attacks(ev).items():
        base = name == base_name and bool(alphas or rhos)
        rec = done.get(name)
        if rec is None:
            out = _attack(model, x, y, name, dict(spec), eps, bs=bs, seed=seed, progress=progress,
                          clean_logits=clean_logits, clean_correct=clean_correct, full=base)
            rec = _attack_record(out, y, num_classes, base or name == base_name)
            if on_unit is not None:
                on_unit(name, rec)
        entry = rec["entry"]
        robust_all &= torch.tensor(rec["robust"], dtype=torch.bool, device=x.device)
        results["attacks"][name] = entry
        arrays["robust_per_class"][name] = entry["per_class"]
        arrays["confusion"][name] = entry["confusion"]
        if "logits" in rec:
            base_logits = torch.tensor(rec["logits"], dtype=torch.float32, device=x.device)
            arrays["entropy"] = metrics.prediction_entropy(base_logits).cpu()
        log.info("%-14s robust accuracy %.2f%%  (%s)", name, 100 * entry["robust_accuracy"], _short(entry["protocol"]))
    if results["attacks"]:
        results["worst_case"] = {"robust_accuracy": robust_all.float().mean().item(),
                                 "attacks": list(results["attacks"]), "n_eval": n}
    if base_logits is not None and (alphas or rhos):
        nu = done.get("nonuniform")
        if nu is None:
            nu = nonuniform_report(model, x, y, base_logits, results["attacks"][base_name]["protocol"], eps, alphas,
                                   rhos, batch_size=bs, seed=seed, progress=progress)
            nu.pop("weights")
            nu["attack"]["column"] = base_name  # A_rob is this column's number, from its one run
            if on_unit is not None:
                on_unit("nonuniform", nu)
        arrays["weights"] = {float(a): metrics.nonuniform_weights(base_logits, y, float(a)).cpu() for a in alphas}
        results["nonuniform"] = nu
    if ev.get("audit"):
        rec = done.get("audit")
        if rec is None:
            rec = _audit(model, x, y, ev, results["attacks"], eps=eps, bs=bs, seed=seed, progress=progress)
            if on_unit is not None:
                on_unit("audit", rec)
        results["audit"] = rec
    return results, arrays


def _audit(model, x, y, ev, suite_attacks, *, eps, bs, seed, progress):
    """The gradient-masking audit on the first ``audit_settings.n`` examples (advrw/attacks/audit.py)."""
    settings = dict(ev["audit_settings"])
    n = min(int(settings["n"]), len(x))
    xa, ya = x[:n], y[:n]
    correct = predict(model, xa, bs).argmax(1) == ya

    def attack(spec, e):
        return white_box(model, xa, ya, spec, e, batch_size=bs, seed=seed, only=correct, desc="audit",
                         progress=progress).robust
    return audit.run_audit(model, xa, ya, eps, settings, attack, suite_attacks, seed=seed, batch_size=bs)


def _short(proto: dict) -> str:
    keys = ("attack", "objective", "eps", "steps", "step", "restarts", "n_iter", "n_queries", "square_queries",
            "nb_iter", "nb_sample", "delta", "lr", "md_steps", "change_point", "n_eval")
    return ", ".join(f"{k}={proto[k]:.4g}" if isinstance(proto.get(k), float) else f"{k}={proto[k]}"
                     for k in keys if k in proto and not isinstance(proto[k], dict))


def table(results: dict) -> str:
    """A compact console table of the suite's numbers with their budgets."""
    rows = [("clean", 100 * results["clean"]["accuracy"], f"n={results['protocol']['n_eval']}")]
    for name, e in results.get("attacks", {}).items():
        rows.append((name, 100 * e["robust_accuracy"], _short(e["protocol"])))
    if "worst_case" in results:
        rows.append(("worst case", 100 * results["worst_case"]["robust_accuracy"], "per example over all attacks"))
    nu = results.get("nonuniform")
    if nu:
        rows.append((f"A_rob (= {nu['attack'].get('column', 'its attack')})", 100 * nu["A_rob"], _short(nu["attack"])))
        for a, v in nu["alpha_test"].items():
            rows.append((f"A_sa a={a}", 100 * v["A_sa"], "unweighted PGD, weights at x+delta*"))
            rows.append((f"A_tr a={a}", 100 * v["A_tr"], f"weighted PGD alpha_test={a}"))
        for r, v in nu["dro"].items():
            rows.append((f"DRO rho={r}", 100 * v["accuracy"], f"weighted loss {v['loss']:.4f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {acc:6.2f}%  {proto}" for name, acc, proto in rows]
    if "audit" in results:
        lines.append(f"{'audit':<{width}}  {verdict_text(results)} (n={results['audit']['n']}, results.json: audit)")
    return "\n".join(lines)
