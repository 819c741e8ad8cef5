"""Leave-one-out and game-theoretic data values from the run store (issue 20): exact and
Newton-step LOO (:mod:`.loo`), semivalues — Banzhaf, Shapley, Beta-Shapley — by exact
enumeration, maximum sample reuse, truncated Monte Carlo and the multilinear extension at
several α (:mod:`.semivalues`), utilities on store outputs (:mod:`.utility`), the store-level
entry point :func:`dmdask.values.api.values` and the paper's App. B α simulation
(:mod:`.alpha_sim`). Submodules are imported on use."""
