"""``python -m dmdask.cli``: the same as the ``dmdask`` command."""

from . import main

main()
