"""Exceptions. Every refusal dmdask makes is a :class:`DmdaskError` with a message that says
what is wrong and where; the CLI prints it as one line and exits non-zero."""


class DmdaskError(Exception):
    """Base class of every error dmdask raises on purpose."""


class StoreError(DmdaskError):
    """The run store is missing, foreign, of another schema or job, or inconsistent."""


class WriteRefused(StoreError):
    """A write was refused; nothing of it reached the store."""


class JobError(DmdaskError):
    """A job spec does not name a valid job, or the job misbehaved."""


class InputError(DmdaskError):
    """Input data (arrays, directories, options) has the wrong shape, dtype or values."""


class UnsupportedTargets(DmdaskError):
    """A solver was asked for targets it cannot solve (e.g. per-target rows on the Gram)."""
