"""The `dmdask` click command run in the test's own process: for refusals, whose checks are the
exit status and the one line on stderr, an interpreter start-up each is most of their time."""

from __future__ import annotations

from click.testing import CliRunner, Result


def invoke(*args: str) -> Result:
    """``dmdask ARGS`` in process; ``.exit_code``, ``.stdout`` and ``.stderr`` apart."""
    from dmdask.cli import main

    try:  # click 8.1 mixes stderr into the output unless told; 8.2 keeps it apart always
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args])
