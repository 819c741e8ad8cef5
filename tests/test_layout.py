"""The package's import graph has no cycles (issue 15, item 18): read statically from every
module's ``import`` statements, so a cycle is caught whether or not an import order happens to
work."""

import ast
from pathlib import Path

import dmdask

ROOT = Path(dmdask.__file__).parent


def _modules():
    """{module name: (file, is a package)} for every module of dmdask."""
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def _parse(source: str) -> ast.Module:
    # CPython 3.11 keeps the AST constructor's recursion counter in per-interpreter state, so
    # a parse that races another thread's compile (FFCV's Loader compiles its pipelines in
    # background threads, test_beton.py) fails with "AST constructor recursion depth
    # mismatch"; the parse of an unchanged file is pure, so try it again
    for attempt in range(3):
        try:
            return ast.parse(source)
        except SystemError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    """Module -> the dmdask modules it imports (``from pkg import mod`` counts as ``pkg.mod``);
    with ``top_level_only``, imports inside functions (run on call, not on import) are left
    out."""
    mods = _modules()
    graph = {}
    for mod, (f, is_pkg) in mods.items():
        tree = _parse(f.read_text(encoding="utf-8"))
        nodes = tree.body if top_level_only else ast.walk(tree)
        deps = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if d in mods and d != mod}
    return graph


def _cycles(graph: dict[str, set[str]], within: str = "dmdask") -> list[list[str]]:
    """Strongly connected components with more than one module, among modules under
    ``within`` (Tarjan's algorithm, iterative)."""
    nodes = [m for m in graph if m == within or m.startswith(within + ".")]
    sub = {m: [d for d in graph[m] if d in nodes] for m in nodes}
    index, low, stack, on, out = {}, {}, [], set(), []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sub[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                on.add(w)
                work.append((w, iter(sub[w])))
            elif w in on:
                low[v] = min(low[v], index[w])
    return out


def test_the_cycle_finder_finds_a_cycle():
    g = {"dmdask.a": {"dmdask.b"}, "dmdask.b": {"dmdask.c"}, "dmdask.c": {"dmdask.a"},
         "dmdask.d": {"dmdask.a"}}
    assert _cycles(g) == [["dmdask.a", "dmdask.b", "dmdask.c"]]
    assert _cycles({"dmdask.a": {"dmdask.b"}, "dmdask.b": set()}) == []


def test_relative_imports_resolve():
    g = _graph(top_level_only=True)
    assert "dmdask.fit.solve.gram.problem" in g["dmdask.fit.solve.gram.path"]
    assert "dmdask.fit.stats" in g["dmdask.fit.solve.gram.solver"]


def test_no_import_cycles_at_import_time():
    assert _cycles(_graph(top_level_only=True)) == []


def _collapse(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """``graph`` with every module of ``package`` merged into one node named ``package``."""
    def name(m):
        return package if m.startswith(package + ".") else m

    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(name(m), set()).update(name(d) for d in deps)
    return {m: deps - {m} for m, deps in out.items()}


def test_the_collapse_sees_a_package_level_two_way_dependency():
    # the statistics pass importing the solver package while a solver imports the pass: no
    # module-level cycle, but a two-way dependency between the two stages
    g = {"dmdask.fit.stats": {"dmdask.fit.solve"}, "dmdask.fit.solve": set(),
         "dmdask.fit.solve.gram": {"dmdask.fit.stats"}}
    assert _cycles(g) == []
    assert _cycles(_collapse(g, "dmdask.fit.solve")) == [["dmdask.fit.solve",
                                                         "dmdask.fit.stats"]]


def test_statistics_pass_and_solvers_depend_one_way():
    """Within ``dmdask.fit`` not even a deferred import goes back up: the solvers (as one
    stage) use the statistics pass, never the other way round, and the Gram solver's modules
    form a chain."""
    g = _graph(top_level_only=False)
    assert _cycles(_collapse(g, "dmdask.fit.solve"), within="dmdask.fit") == []
    assert _cycles(g, within="dmdask.fit.solve.gram") == []
