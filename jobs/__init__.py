"""Learning algorithms ("jobs") that dmdask trains on random subsets.

A job is a class named by an import path ``"module:Class"`` (see :mod:`dmdask.jobspec`):

``jobs.digits:DigitsMLP``
    The embedded CPU default: a small MLP on scikit-learn's bundled 8x8 digits, many models
    trained at once as one batched torch computation.
``jobs.digits:DigitsLogistic``
    L2-regularised multinomial logistic regression on the same data, solved to high precision
    (deterministic given the mask): the convex job used for exactness checks.
``jobs.digits:DigitsRidge``
    One-vs-rest ridge regression on the same data in closed form: the least-squares job
    (exact leave-one-out by Sherman–Morrison, ``loo_exact``).
``jobs.digits_leaky:DigitsLeakyMLP`` / ``DigitsLeakyLogistic``
    The MLP and the logistic job with near-duplicates of some test images planted in the
    training set, recorded by ``planted_pairs()``: the ground truth of ``dmdask leakage``.

Importing this package is cheap: torch and scikit-learn are imported by the jobs only when
they are constructed or run.
"""

JOBS = ("jobs.digits:DigitsMLP", "jobs.digits:DigitsLogistic", "jobs.digits:DigitsRidge",
        "jobs.digits_leaky:DigitsLeakyMLP", "jobs.digits_leaky:DigitsLeakyLogistic")

__all__ = ["JOBS"]
