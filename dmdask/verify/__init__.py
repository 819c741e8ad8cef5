"""Verifiable attribution: the prover/verifier protocols of Karchmer, Pawelczyk and Neel.

``fourier`` (exact p-biased quantities on enumerable N), ``residual`` (RESIDUALESTIMATION),
``protocols`` (non-interactive and two-message interactive, CHECKEQUIV), ``provers`` (honest and
adversarial), ``learners`` (synthetic learners with known structure), ``training`` (the
verifier's models in a run store, trained by :func:`dmdask.train`).
"""

from .protocols import (
                        CheckEquiv,
                        Plan,
                        ProverMessage,
                        Verdict,
                        interactive,
                        make_plan,
                        non_interactive,
)

__all__ = ["CheckEquiv", "Plan", "ProverMessage", "Verdict", "interactive", "make_plan",
           "non_interactive"]
