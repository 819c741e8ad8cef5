"""The Gram solver: the LASSO path of many targets that share one design, from sufficient
statistics only (DESIGN.md "Solving many LASSOs that share one design", REFERENCE.md §1).

Per target block, on the standardised centred problem scaled by 1/n
(Q = X̃_cᵀX̃_c/n, q = X̃_cᵀy_c/n, yv = ‖y_c‖²/n), for each λ on the grid:

    minimise ½ wᵀQw − qᵀw + ½yv + λ‖w‖₁   (= (1/2n)‖y_c − X̃_c w‖² + λ‖w‖₁)

* **Per-target working sets.** The correlation C = q − QW is kept for all d coordinates (it
  is the negative gradient, so the KKT check is one GEMM); at each λ every target t gets its
  own working set A_t = supp(w_t) ∪ {j : |C_jt| ≥ 2λ_t − λ_prev,t} (sequential strong rule);
  KKT violators found by the full-gradient check join A_t. Restricted to A_t the subproblem
  Gram is well conditioned (|A_t| ≪ n) and has no fixed-size null direction.
* **Two routes**, chosen per target by cost (``stack_ratio``: |A_t|² ≤ ratio·d·|∪A|, setting
  ``dmdask.solve.gram-stack-ratio``): small working sets are gathered into a stack
  Q[A_t, A_t] [T, K, K] (padded) and solved together by blocked coordinate descent (work
  Σ|A_t|² per sweep; gathers cost ~5 ns/entry, so this wins only while K is small); large
  ones by accelerated proximal gradient on the full Gram with each target's prox masked to
  A_t (``method="fista"``: one GEMM QX per iteration, per-target step from the curvature
  along the step, violators join on the fly) or by the union-working-set coordinate
  descent (``method="cd"``).
* **Newton steps.** With few models per training example (n ≲ d) the supports approach the
  rank and first-order methods need hundreds of iterations per λ. On the masked route a
  column whose support and signs have not changed for ``newton_every`` iterations (setting
  ``dmdask.solve.gram-newton-every``), from iteration 20 of a λ and once its iterations since
  its last step cost more than a step, gets an active-set Newton step: Q_SS w = q_S − λ·sign on its support,
  coordinates whose sign flips leave and the reduced system is solved again, and the point
  is kept only where the objective drops (:func:`.newton.newton_step`).
* **Precision.** With tol ≥ 1e-7 the GEMMs are float32; every convergence decision is
  certified in float64 (a float32 error in |C_j| near λ moves the gap by up to λ‖w‖₁·err/λ):
  on the stacked route the gap's pieces are float64 and the float32 gradient outside A_t
  enters only through the dual scaling, so a rigorous rounding-error bound on it
  (:meth:`_Problem.f32_error_bound`) certifies without a float64 GEMM; targets whose bound is
  too loose, and the masked route, re-check with a float64 gradient.
* **Stop** per target on the duality gap (§1.5) of the full problem:
  gap ≤ tol·‖y_c‖²/(2n). Converged targets leave the computation; a target that spends
  ``max_iter`` at one λ stops its path there (``converged`` False; the fit warns).
* **Constant targets** (spread within the rounding of their sums, :func:`flat_targets`) get
  w = 0 on the rows where they are constant, without a solve; constant on all fitting rows
  (or, under the holdout, on the training rows): λ = 0 and no path at all.
* **Validation MSE** from the validation statistics in the training standardisation, centred
  at the validation means (:class:`_ValGram`): w̃ᵀQ_v w̃ from a gather of Q_v[S_t, S_t] for
  small supports, one GEMM on the supports' rows for the others.

Selection, refit and raw-space conversion follow :mod:`dmdask.fit.solve.base`. Which inner
solver wins was measured in ``benchmarks/bench_solve.py`` (see ``benchmarks/RESULTS.md``);
the default is the winner (setting ``dmdask.solve.gram-method``).

Modules, from the statistics to the result (each imports only those listed before it):

* :mod:`.standardise` — Q, q, yv, λ_max and the constant targets from the statistics;
* :mod:`.arrays`, :mod:`.gap` — shared array helpers; the duality gap;
* :mod:`.union`, :mod:`.stacked`, :mod:`.newton`, :mod:`.masked` — the inner routes at one λ;
* :mod:`.problem` — ``_Problem``: the Gram, its products and rounding bound, the gauge, and
  the per-λ dispatch to the routes;
* :mod:`.path` — the λ path of a block of targets (``gram_path``);
* :mod:`.validation` — validation MSE from the held-out statistics;
* :mod:`.block` — one target block: grid, training paths, selection, refit;
* :mod:`.solver` — ``solve_from_stats`` (Grams, blocks, lanes, cluster) and ``GramSolver``.
"""

from .path import gram_path
from .solver import GramSolver, solve_from_stats
from .standardise import flat_targets, lambda_max

__all__ = ["GramSolver", "gram_path", "solve_from_stats", "lambda_max", "flat_targets"]

# internals the solver tests reach for, importable here as they were before the split
from .arrays import _padded_rows, _size_chunks  # noqa: E402, F401
from .gap import _gap  # noqa: E402, F401
from .problem import _Problem  # noqa: E402, F401
from .standardise import _std_gram, _std_targets  # noqa: E402, F401
from .validation import _ValGram  # noqa: E402, F401
