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

from advrw.evaluation import metrics
from advrw.attacks import fgsm, model_mode, pgd
from advrw.core.keys import as_list
from advrw.attacks import external
from advrw.attacks.mde import STAGES, run_mde

log = logging.getLogger(__name__)

ATTACK_KINDS = ("fgsm", "pgd", "autoattack", "apgd_ce", "mde", "square", "spsa", "fmn")
# Protocol keys an APGD-CE-only run keeps from the AutoAttack adapter's record.
_APGD_KEYS = ("library", "library_version", "attacks", "n_iter", "norm", "batch_size", "n_invalid")


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


def _pgd_protocol(name, spec, eps, n, seed):
    kind = spec["kind"]
    if kind == "fgsm":
        return {"attack": "fgsm", "eps": eps, "steps": 1, "step": eps, "restarts": 1, "init": "none",
                "n_eval": n, "seed": seed}
    proto = {"attack": "pgd", "objective": spec.get("objective", "ce"), "eps": eps, "steps": int(spec["steps"]),
             "step": float(spec["step"]), "restarts": int(spec.get("restarts", 1)),
             "init": spec.get("init", "uniform"), "n_eval": n, "seed": seed}
    if proto["objective"] == "scaled_ce":
        proto["scale"] = float(spec.get("scale", 10.0))
    if proto["objective"] == "weighted_ce":
        proto["alpha"] = float(spec.get("alpha", 1.0))
    return proto


def white_box(model, x, y, spec, eps, *, batch_size, seed, only=None, desc="attack", progress=True,
              clean_logits=None):
    """FGSM / PGD-k from the shared engine, batched; returns adversarial logits for all of x.

    ``only`` (bool [N]) restricts the work to those examples; the others keep clean logits
    (pass ``clean_logits`` when the caller has them, to skip that forward).
    """
    n = len(x)
    proto = _pgd_protocol(desc, spec, eps, n, seed)
    logits = (predict(model, x, batch_size) if clean_logits is None else clean_logits).clone()
    idx = torch.arange(n, device=x.device) if only is None else only.nonzero().squeeze(1)
    gen = _generator(x.device, seed)
    for start in tqdm(range(0, len(idx), batch_size), desc=desc, disable=not progress, leave=False):
        b = idx[start:start + batch_size]
        if spec["kind"] == "fgsm":
            res = fgsm(model, x[b], y[b], eps=eps, final_logits=True)
        else:
            res = pgd(model, x[b], y[b], eps=eps, step=proto["step"], steps=proto["steps"], init=proto["init"],
                      objective=proto["objective"], alpha=proto.get("alpha", 1.0), scale=proto.get("scale", 10.0),
                      restarts=proto["restarts"], generator=gen, final_logits=True)
        logits[b] = res.logits
    return AttackOutput(logits, logits.argmax(1) == y, proto, {})


def _library_attack(model, x, y, spec, eps, *, batch_size, seed):
    kind = spec["kind"]
    if kind == "autoattack":
        return external.run_autoattack(model, x, y, eps=eps, version=spec.get("version", "standard"), seed=seed,
                                       batch_size=batch_size)
    if kind == "apgd_ce":  # AutoAttack's first stage alone, its official budget (100 iterations)
        res = external.run_autoattack(model, x, y, eps=eps, seed=seed, batch_size=batch_size, attacks=["apgd-ce"],
                                      apgd_restarts=int(spec.get("restarts", 1)))
        res.protocol = {**{k: res.protocol[k] for k in _APGD_KEYS}, "loss": "ce",
                        "restarts": res.protocol["restarts"]["apgd-ce"]}
        res.per_attack = {}
        return res
    if kind == "mde":
        return run_mde(model, x, y, eps=eps, steps=int(spec.get("steps", 50)),
                       change_point=int(spec.get("change_point", 20)),
                       n_target_classes=int(spec.get("n_target_classes", 9)), stages=spec.get("stages", STAGES),
                       seed=seed, batch_size=batch_size)
    if kind == "square":
        return external.run_square(model, x, y, eps=eps, n_queries=int(spec.get("n_queries", 5000)),
                                   p_init=float(spec.get("p_init", 0.8)), seed=seed, batch_size=batch_size)
    if kind == "spsa":  # each image costs nb_sample forwards per iteration: small batches
        return external.run_spsa(model, x, y, eps=eps, delta=float(spec.get("delta", 0.001)),
                                 lr=float(spec.get("lr", 0.01)), nb_iter=int(spec.get("nb_iter", 100)),
                                 nb_sample=int(spec.get("nb_sample", 256)),
                                 max_batch_size=int(spec.get("max_batch_size", 64)),
                                 batch_size=int(spec.get("batch_size", 32)), seed=seed)
    return external.run_fmn(model, x, y, eps=eps, steps=int(spec.get("steps", 100)), batch_size=batch_size, seed=seed)


def black_box(model, x, y, spec, eps, *, batch_size, seed, only, desc, progress=True, clean_logits=None):
    """AutoAttack / Square / SPSA / FMN through the maintained libraries (``advrw.attacks.external``).

    Runs on the still-robust examples in chunks of ``batch_size`` (one tqdm step each); the
    libraries' per-attack accuracies are combined weighted by chunk size.
    """
    idx = only.nonzero().squeeze(1)
    logits = (predict(model, x, batch_size) if clean_logits is None else clean_logits).clone()
    robust = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    per_attack: dict = {}
    warnings: list[str] = []
    proto: dict = {}
    log.info("%s on %d still-robust examples", desc, len(idx))
    for start in tqdm(range(0, len(idx), batch_size), desc=desc, disable=not progress, leave=False):
        b = idx[start:start + batch_size]
        res = _library_attack(model, x[b], y[b], spec, eps, batch_size=batch_size, seed=seed)
        logits[b] = predict(model, res.x_adv, batch_size)
        robust[b] = res.robust
        proto = dict(res.protocol)
        for name, acc in getattr(res, "per_attack", {}).items():  # fractions of the chunk -> counts
            per_attack[name] = per_attack.get(name, 0.0) + float(acc) * len(b)
        warnings += [w for w in getattr(res, "warnings", []) if w not in warnings]
    for w in warnings:
        log.warning("%s sanity check: %s", desc, w)
    proto.update({"attack": spec["kind"], "eps": eps, "n_eval": len(x), "n_attacked": len(idx), "seed": seed})
    proto.pop("n", None)
    extra = {}
    if spec["kind"] in ("autoattack", "mde"):
        # robust accuracy over the whole evaluated set after each stage of the cascade
        extra = {"per_attack": {k: v / len(x) for k, v in per_attack.items()}, "warnings": warnings}
    return AttackOutput(logits, robust, proto, extra)


def selected_attacks(ev) -> dict:
    """The preset's attacks, narrowed to ``eval.only`` when given (names checked by the validator)."""
    attacks = dict(ev.get("attacks") or {})
    only = as_list(ev.get("only"))
    return {k: v for k, v in attacks.items() if k in only} if only else attacks


def _class_report(pred, y, num_classes):
    return {"per_class": metrics.per_class_accuracy(pred, y, num_classes).tolist(),
            "confusion": metrics.confusion_matrix(pred, y, num_classes).tolist()}


def _key(value) -> str:
    """JSON keys for alpha_test / rho: ``1`` and ``1.0`` from the command line are the same."""
    return str(float(value))


def nonuniform_report(model, x, y, base_logits, spec, eps, alphas, rhos, *, batch_size, seed, progress):
    """Zeng et al.: A_rob, and per alpha_test A_sa (unweighted PGD) and A_tr (weighted PGD)."""
    out = {"attack": _pgd_protocol("nonuniform", spec, eps, len(x), seed),
           "A_rob": metrics.accuracy(base_logits, y), "alpha_test": {}, "dro": {}, "weights": {}}
    for a in alphas:
        weighted = dict(spec, objective="weighted_ce", alpha=float(a), kind="pgd")
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


def run_suite(model, x, y, ev, *, num_classes, progress=True) -> tuple[dict, dict]:
    """Evaluate ``model`` on ``(x, y)`` (float [0,1], on the model's device) with config ``ev``.

    Returns ``(results, arrays)``: ``results`` is JSON-ready (numbers with protocols);
    ``arrays`` holds the tensors behind the figures (entropies, normalised weights, confusion).
    """
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
        spec = dict(spec)
        wants_full = name == base_name and (alphas or rhos)
        only = None if wants_full else clean_correct
        if spec["kind"] in ("fgsm", "pgd"):
            out = white_box(model, x, y, spec, eps, batch_size=bs, seed=seed, only=only, desc=name, progress=progress,
                            clean_logits=clean_logits)
        else:
            out = black_box(model, x, y, spec, eps, batch_size=bs, seed=seed, only=clean_correct, desc=name,
                            progress=progress, clean_logits=clean_logits)
        robust = out.robust & clean_correct
        robust_all &= robust
        pred = out.logits.argmax(1)
        entry = {"robust_accuracy": robust.float().mean().item(), "protocol": out.protocol,
                 **_class_report(pred, y, num_classes), **out.extra}
        if out.protocol.get("attack") in ("pgd", "fgsm"):
            entry["high_entropy_share"] = metrics.high_entropy_share(out.logits)
        results["attacks"][name] = entry
        arrays["robust_per_class"][name] = entry["per_class"]
        arrays["confusion"][name] = entry["confusion"]
        if name == base_name:
            base_logits = out.logits
            arrays["entropy"] = metrics.prediction_entropy(out.logits).cpu()
        log.info("%-14s robust accuracy %.2f%%  (%s)", name, 100 * entry["robust_accuracy"], _short(out.protocol))
    if results["attacks"]:
        results["worst_case"] = {"robust_accuracy": robust_all.float().mean().item(),
                                 "attacks": list(results["attacks"]), "n_eval": n}
    if base_logits is not None and (alphas or rhos):
        nu = nonuniform_report(model, x, y, base_logits, dict(ev["attacks"][base_name]), eps, alphas, rhos,
                               batch_size=bs, seed=seed, progress=progress)
        arrays["weights"] = nu.pop("weights")
        results["nonuniform"] = nu
    return results, arrays


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
        rows.append(("A_rob", 100 * nu["A_rob"], _short(nu["attack"])))
        for a, v in nu["alpha_test"].items():
            rows.append((f"A_sa a={a}", 100 * v["A_sa"], "unweighted PGD, weights at x+delta*"))
            rows.append((f"A_tr a={a}", 100 * v["A_tr"], f"weighted PGD alpha_test={a}"))
        for r, v in nu["dro"].items():
            rows.append((f"DRO rho={r}", 100 * v["accuracy"], f"weighted loss {v['loss']:.4f}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {acc:6.2f}%  {proto}" for name, acc, proto in rows)
