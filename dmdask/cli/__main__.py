"""``python -m dmdask.cli``: the same as the ``dmdask`` command."""

from .commands import main

main()
