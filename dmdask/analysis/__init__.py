"""Stage 4 — what datamodels (and the estimators they are compared with) are used for.

``metrics`` and ``scores`` are the shared vocabulary; ``evaluate`` scores any attribution matrix
on held-out models; ``estimators`` computes the peers; ``compare`` is the paper's Table 5;
``complexity`` its sample-complexity curves; ``lemma`` the influence-OLS identity check.
Submodules import lazily: ``import dmdask.analysis`` costs nothing.
"""
