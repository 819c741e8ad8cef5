"""Record benchmark output in ``benchmarks/RESULTS.md``, one section per benchmark.

Each script calls :func:`record` with its section name and the Markdown it printed; the
section is replaced between markers together with the exact command line and the machine,
so numbers in RESULTS.md only ever come from a run (never typed by hand).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
HEADER = ("# Benchmark results\n\nEvery section below is written by the script named in it; "
          "rerun the command to refresh it. Numbers are never edited by hand.\n")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def command() -> str:
    argv = [os.path.relpath(sys.argv[0])] + sys.argv[1:]
    return "python " + " ".join(shlex.quote(a) for a in argv)


def record(section: str, body: str, *, path: str = RESULTS) -> None:
    """Replace (or append) ``section`` in RESULTS.md with ``body`` plus its command."""
    text = open(path).read() if os.path.exists(path) else HEADER
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = (f"{start}\n## {section}\n\n`{command()}` — {machine()}, "
             f"{time.strftime('%Y-%m-%d')}\n\n{body.strip()}\n{end}")
    pat = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block
    with open(path, "w") as f:
        f.write(text.rstrip() + "\n")


def table(rows: list[dict], cols: list[str]) -> str:
    """A Markdown table of ``rows`` (dicts) in the order of ``cols``."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
