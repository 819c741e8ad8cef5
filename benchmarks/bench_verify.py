"""The KPN verification protocols measured (issue 19): completeness and soundness rates with
binomial confidence intervals, the verifier's trainings against N and against ε (fitted log
slopes, a log-log plot), interactive against non-interactive, and the naive low-MSE check
fooled by a*/2.

Simulations use synthetic learners with known p-biased Fourier structure
(``dmdask.verify.learners``: juntas on 8 of N examples with |f| ≤ 1, seed noise optional), so
every prover's true gap err(a) is exact; each repetition draws a fresh challenge, spot-check set
and MSE sample. The constants are the shipped ``dmdask.verify.*`` settings.

    python benchmarks/bench_verify.py --record              # simulations (~10 min on 2 cores)
    python benchmarks/bench_verify.py --real --record       # digits and kNN stores (slower)

Writes the sections "Verification: …" of ``benchmarks/RESULTS.md`` and
``docs/verify_cost.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from scipy.stats import binomtest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results  # noqa: E402

from dmdask.verify import learners, protocols, provers  # noqa: E402

P, DELTA = 0.3, 0.1
HERE = os.path.dirname(os.path.abspath(__file__))


def ci(k: int, n: int) -> str:
    lo, hi = binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}]"


def _pair(name, n_train, noise=0.0, seed=1):
    return (learners.make_learner(name, n_train, P, noise=noise, seed=seed),
            learners.make_learner(name, n_train, P, noise=noise, seed=seed))


def _provers(ver, pro, plan, eps, rng):
    w, _ = ver.optimal()
    half = provers.scaled(w, 0.5)
    b = ver.b_ge2() + ver.noise ** 2  # what mse_hat estimates (fresh seeds carry Var ξ)
    out = [("honest (a*)", w, None), ("a*/2", half, None),
           ("scaled a*/4", provers.scaled(w, 0.25), None),
           ("zero", provers.scaled(w, 0.0), None),
           ("noised (sd 0.12)", provers.noised(w, 0.12, rng), None),
           ("permuted", provers.permuted(w, rng, among=ver.coords), None),
           ("4 coords corrupted", provers.corrupted(w, ver.coords[:4], -1.5), None),
           ("group +1.2", provers.favoured(w, ver.coords[:3], 1.2), None)]
    for lvl in (2, 1):
        out.append((f"targeted {'2ρ' if lvl == 2 else 'ρ'}-pairs, a*/2", half,
                    dict(claim_mse=b + ver.gap(half), epsilon=eps, rho=plan.rho,
                         bound=ver.bound, level=lvl)))
    out.append(("targeted 2ρ, ≤ m* models, a*/2", half,
                dict(claim_mse=b + ver.gap(half), epsilon=eps, rho=plan.rho, bound=ver.bound,
                     level=2, max_models=int(plan.m_star))))
    return out


def rates(name: str, eps: float, reps: int, noise: float = 0.0) -> tuple[str, list[dict]]:
    ver, pro = _pair(name, 1000, noise)
    plan = protocols.make_plan(eps, DELTA, P)
    q = ver.exact()
    rows = []
    rng = np.random.default_rng(0)
    t_naive = 0.5 * (q.mean_sq - q.weights[0])  # preset: "explains half the output variance"
    for label, a, targeted in _provers(ver, pro, plan, eps, rng):
        gap = ver.gap(a)
        if label.startswith("honest"):
            need = "accept ≥ 1−δ"  # completeness
        elif gap > eps:
            need = "accept ≤ δ"    # soundness
        else:
            need = "either (err ≤ ε)"
        protos = ["interactive"] if targeted else ["interactive", "non-interactive", "naive"]
        for proto in protos:
            acc, corrupted = 0, []
            t0 = time.perf_counter()
            for s in range(reps):
                if proto == "interactive":
                    pr = (provers.Targeted(pro, a, **targeted) if targeted
                          else provers.Honest(pro, a))
                    v = protocols.interactive(ver, pr, plan, seed=s)
                    if targeted:
                        corrupted.append(pr.corrupted)
                elif proto == "non-interactive":
                    v = protocols.non_interactive(ver, a, plan, seed=s)
                else:
                    v = protocols.naive(ver, a, plan, t=t_naive, seed=s)
                acc += v.accepted
            rate = acc / reps
            ok = (rate >= 1 - DELTA if need.startswith("accept ≥") else
                  rate <= DELTA if need.startswith("accept ≤") else True)
            rows.append({"prover": label, "err(a)/ε": round(gap / eps, 3), "protocol": proto,
                         "accept rate [95% CI]": ci(acc, reps), "required": need if
                         proto != "naive" else "(baseline)",
                         "met": ("yes" if ok else "**no**") if proto != "naive" and
                         not need.startswith("either") else "",
                         "mean corrupted models": f"{np.mean(corrupted):.0f}" if corrupted else "",
                         "s/run": round((time.perf_counter() - t0) / reps, 3)})
            print(rows[-1], flush=True)
    head = (f"Learner `{name}` (junta on 8 of N = 1,000 examples, p = {P}, seed noise sd "
            f"{noise}): B_1 = {q.b1:.4f}, B_≥2 = {q.b_ge2:.4f}, B_1/4 = {q.b1 / 4:.4f}. "
            f"ε = {eps}, δ = {DELTA}; plan: ρ = {plan.rho:.3f}, |E| = {plan.n_challenge:,}, "
            f"|C| = {plan.n_checks:,}, |M| = {plan.n_mse:,}, m* = {plan.m_star:.0f}; "
            f"{reps} repetitions per row. Naive check: accept iff mse_hat ≤ t + ε with "
            f"t = Var(f)/2 = {t_naive:.4f}.")
    return head, rows


def versus_n(eps: float, reps: int) -> tuple[str, list[dict]]:
    plan = protocols.make_plan(eps, DELTA, P)
    rows = []
    for n in (100, 1_000, 10_000, 100_000):
        ver, pro = _pair("strong", n)
        w, _ = ver.optimal()
        acc_h = acc_half = 0
        t0 = time.perf_counter()
        for s in range(reps):
            ver.trained = 0
            acc_h += protocols.interactive(ver, provers.Honest(pro, w), plan, seed=s).accepted
            trained = ver.trained
            acc_half += protocols.interactive(ver, provers.Honest(pro, w / 2), plan,
                                              seed=s).accepted
        ver.trained = 0
        protocols.non_interactive(ver, w, plan, seed=0)
        rows.append({"N": f"{n:,}", "verifier trainings (interactive)": trained,
                     "verifier trainings (non-interactive)": ver.trained,
                     "prover trainings": plan.n_challenge,
                     "honest accepted": ci(acc_h, reps), "a*/2 accepted": ci(acc_half, reps),
                     "s/run": round((time.perf_counter() - t0) / (2 * reps), 3)})
        print(rows[-1], flush=True)
    head = (f"Learner `strong`, ε = {eps}, δ = {DELTA}, p = {P}; trainings counted by the "
            f"verifier's own learner; {reps} repetitions per N. The simulation draws only the "
            f"examples the learner and the scores depend on (exact: the others change nothing), "
            f"so N enters only through the subsets the verifier would send.")
    return head, rows


def versus_eps(reps: int) -> tuple[str, list[dict], dict]:
    eps_grid = [0.05, 0.1, 0.2, 0.4]
    rows = []
    counts = {"interactive": [], "non-interactive": [], "prover": []}
    for eps in eps_grid:
        plan = protocols.make_plan(eps, DELTA, P)
        ver, pro = _pair("strong", 1000)
        w, _ = ver.optimal()
        acc = 0
        t0 = time.perf_counter()
        for s in range(reps):
            ver.trained = 0
            acc += protocols.interactive(ver, provers.Honest(pro, w), plan, seed=s).accepted
        measured = ver.trained
        counts["interactive"].append(measured)
        counts["non-interactive"].append(plan.verifier_trainings("non-interactive"))
        counts["prover"].append(plan.n_challenge)
        rows.append({"ε": eps, "interactive: verifier": measured,
                     "non-interactive: verifier": plan.verifier_trainings("non-interactive"),
                     "interactive: prover": plan.n_challenge,
                     "honest accepted (interactive)": ci(acc, reps),
                     "s/run": round((time.perf_counter() - t0) / reps, 3)})
        print(rows[-1], flush=True)
    slopes = {k: float(np.polyfit(np.log(eps_grid), np.log(v), 1)[0]) for k, v in counts.items()}
    _plot(eps_grid, counts, slopes)
    head = (f"Learner `strong`, δ = {DELTA}; {reps} repetitions per ε. Fitted log-log slopes "
            f"of trainings against ε: " + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items())
            + " (theory: −2 for the interactive verifier, −3 for the non-interactive one and "
            "for the prover). Plot: `docs/verify_cost.png`.")
    return head, rows, slopes


def _plot(eps, counts, slopes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for k, mk in (("interactive", "o-"), ("non-interactive", "s-"), ("prover", "^--")):
        lab = {"interactive": "verifier, interactive", "non-interactive":
               "verifier, non-interactive", "prover": "prover (interactive)"}[k]
        ax.loglog(eps, counts[k], mk, label=f"{lab} (slope {slopes[k]:.2f})")
    ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.minorticks_off()
    ax.set_xlabel("ε")
    ax.set_ylabel("trainings")
    ax.set_title(f"KPN verification cost (δ = {DELTA})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "..", "docs", "verify_cost.png"), dpi=120)


# ----------------------------------------------------------------------------- calibration


def calibrate(reps: int) -> tuple[str, list[dict]]:
    """Errors of B̂_≥2 and mse_hat (honest scores) and the honest/a*/2/targeted accept rates
    for candidate constants: what fixed the shipped ones."""
    eps = 0.2
    rows = []
    grid = [{"c-pairs": 8.0, "c-rho": 0.5, "c-checks": 16.0},
            {"c-pairs": 32.0, "c-rho": 0.5, "c-checks": 16.0},
            {"c-pairs": 32.0, "c-rho": 1.0, "c-checks": 16.0},
            {"c-pairs": 32.0, "c-rho": 0.5, "c-checks": 4.0},
            {"c-pairs": 32.0, "c-rho": 0.5, "c-checks": 1.0}]
    for name, noise in (("strong", 0.0), ("majority3", 0.3), ("cubic", 0.0)):
        ver, pro = _pair(name, 1000, noise)
        w, _ = ver.optimal()
        b = ver.b_ge2() + noise ** 2  # both estimates carry Var ξ (fresh seeds)
        a = provers.scaled(w, 0.25)
        for const in grid:
            plan = protocols.make_plan(eps, DELTA, P, constants=const)
            eb, em, acc_h, acc_t, corr = [], [], 0, 0, []
            for s in range(reps):
                v = protocols.interactive(ver, provers.Honest(pro, w), plan, seed=s)
                eb.append(v.b_ge2_hat[0] - b)
                em.append(v.mse_hat[0] - b)
                acc_h += v.accepted
                t = provers.Targeted(pro, a, claim_mse=b + ver.gap(a), epsilon=eps,
                                     rho=plan.rho, bound=ver.bound, level=1)
                acc_t += protocols.interactive(ver, t, plan, seed=s).accepted
                corr.append(t.corrupted)
            eb, em = np.array(eb), np.array(em)
            rows.append({"learner": name, **{k: v for k, v in const.items()},
                         "B̂_≥2 − B_≥2: mean": round(float(eb.mean()), 4),
                         "sd": round(float(eb.std(ddof=1)), 4),
                         "mse_hat − mse: sd": round(float(em.std(ddof=1)), 4),
                         "honest accepted": ci(acc_h, reps),
                         "err(a*/4)/ε": round(ver.gap(a) / eps, 2),
                         "targeted ρ (a*/4) accepted": ci(acc_t, reps),
                         "its models / m*": round(float(np.mean(corr)) / plan.m_star, 2),
                         "V trainings": plan.verifier_trainings("interactive"),
                         "size of E": plan.n_challenge})
            print(rows[-1], flush=True)
    head = (f"ε = {eps} (ε/4 = {eps / 4}), δ = {DELTA}, c-mse = 4, interactive protocol, "
            f"{reps} repetitions per row; B_≥2 includes Var ξ. The targeted prover sends a*/4 "
            "and corrupts ρ-level models, the cheapest attack per model; soundness asks its "
            "acceptance ≤ δ only where err(a*/4) > ε (`strong`); elsewhere accepting is "
            "correct.")
    return head, rows


# ----------------------------------------------------------------------------- real jobs


def real(workers: int) -> tuple[str, list[dict]]:
    import dmdask
    from dmdask.verify import training

    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-verify-")
    # (job, params, source models, label, u = ε/bound²): kNN (3,000 models/s here) at a
    # useful ε; the logistic job (tens of models/s on 2 shared cores) at a coarser one
    jobs = [("jobs.knn:DigitsKNN", {"n_train": 300, "n_target": 50}, 3000, "digits kNN", 0.1),
            ("jobs.digits:DigitsLogistic", {}, 1000, "digits logistic", 0.3)]
    for job, params, n_models, label, u in jobs:
        src = os.path.join(tmp, label.replace(" ", "_") + ".zarr")
        t0 = time.perf_counter()
        dmdask.create_store(src, job=job, params=params, n_models=n_models, alpha=0.5,
                            sampling="bernoulli")
        dmdask.train(src, workers=workers, progress=False)
        ds = dmdask.open_store(src)
        # the target whose margin varies most among the first 20 (saturated ones carry no
        # attribution to verify)
        target = int(np.argmax(ds.margin.values[:, :20].var(axis=0)))
        dm = dmdask.fit_datamodels(src, targets=[target])
        w = dm.weight.values[0].astype(np.float64)  # dmdask as the honest prover: its LASSO fit
        prep = time.perf_counter() - t0
        _, bound = training.scale_of(src, np.array([target]))
        eps = u * bound ** 2
        for sname, a in (("dmdask datamodel (LASSO)", w), ("its a*/2", w / 2),
                         ("zero scores", 0 * w), ("negated", -w)):
            t0 = time.perf_counter()
            v = training.verify_store(src, a[None], eps, 0.2, targets=[target],
                                      workdir=os.path.join(tmp, label + ".verify"),
                                      train_options={"workers": workers, "progress": False})
            rows.append({"job": label, "N": ds.sizes["train"], "target": target,
                         "Var margin": round(float(ds.margin.values[:, target].var()), 4),
                         "scores": sname, "ε": round(eps, 4),
                         "decision": "accept" if v.accepted else "abort",
                         "mse_hat": round(float(v.mse_hat[0]), 4),
                         "B̂_≥2": round(float(v.b_ge2_hat[0]), 4),
                         "gap_hat": round(float(v.gap_hat[0]), 4),
                         "verifier trainings": v.verifier_trainings,
                         "trained now (V)": v.extra["verifier_trained_now"],
                         "prover trainings": v.prover_trainings,
                         "trained now (P)": v.extra.get("prover_trained_now", 0),
                         "wall s": round(time.perf_counter() - t0, 1),
                         "store + fit s": round(prep, 1)})
            print(rows[-1], flush=True)
    head = ("Interactive protocol through run stores and `dmdask.train` (LocalCluster, "
            f"{workers} workers), δ = 0.2, one target (the most variable of the first 20), "
            "bound = 2 sd of the source store's margins, ε = u·bound² = 4u·Var (kNN: u = 0.1; "
            "logistic: u = 0.3, because that job trains far slower on these shared cores). "
            "Source stores: Bernoulli(½) models (kNN 3,000, logistic 1,000); the honest scores are dmdask's LASSO datamodel of that store. The first row of a job trains the challenge and the "
            "verifier's models; later rows reuse every model already trained (same seed: the "
            "same challenge and M), so they cost inference only.")
    return head, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--real", action="store_true", help="the real-job section only")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--calibrate", action="store_true", help="the calibration section only")
    args = ap.parse_args()
    if args.calibrate:
        head, rows = calibrate(max(20, args.reps // 2))
        body = head + "\n\n" + results.table(rows, list(rows[0]))
        print(body)
        if args.record:
            results.record("Verification: calibration of the constants", body)
        return
    cols_r = ["prover", "err(a)/ε", "protocol", "accept rate [95% CI]", "required", "met",
              "mean corrupted models", "s/run"]
    if args.real:
        head, rows = real(args.workers)
        body = head + "\n\n" + results.table(rows, list(rows[0]))
        print(body)
        if args.record:
            results.record("Verification: real jobs", body)
        return
    parts = []
    for name, eps, noise in (("strong", 0.1, 0.0), ("majority3", 0.1, 0.3)):
        head, rows = rates(name, eps, args.reps, noise)
        parts.append(head + "\n\n" + results.table(rows, cols_r))
    body_rates = "\n\n".join(parts)
    head_n, rows_n = versus_n(0.1, max(20, args.reps // 4))
    body_n = head_n + "\n\n" + results.table(rows_n, list(rows_n[0]))
    head_e, rows_e, _ = versus_eps(max(20, args.reps // 4))
    body_e = head_e + "\n\n" + results.table(rows_e, list(rows_e[0]))
    print(body_rates, body_n, body_e, sep="\n\n")
    if args.record:
        results.record("Verification: completeness and soundness", body_rates)
        results.record("Verification: trainings against N", body_n)
        results.record("Verification: trainings against ε", body_e)


if __name__ == "__main__":
    main()
