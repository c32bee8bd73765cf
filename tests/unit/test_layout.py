"""The package's import graph has no circle (module-level and function-level imports)."""

import ast
from pathlib import Path

import driftloop

ROOT = Path(driftloop.__file__).parent


def _graph() -> dict[str, set[str]]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("driftloop", *path.relative_to(ROOT).with_suffix("").parts))
        mods[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    graph = _graph()
    assert len(graph) > 40 and graph["driftloop.steps.loop"]  # the graph was really read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


#: The floors of the package, lowest first: a module imports only from its own floor or
#: below (README "Where things live"; ../shared/DESIGN.md "Layers").
FLOORS: list[tuple[str, ...]] = [
    ("driftloop", "driftloop.errors", "driftloop.serde", "driftloop.clock",
     "driftloop.config", "driftloop.notify"),
    ("driftloop.data",),
    ("driftloop.models",),
    ("driftloop.decide",),
    ("driftloop.serving",),
    ("driftloop.rollout",),
    ("driftloop.steps",),
    ("driftloop.kfp",),
    ("driftloop.demo",),
    ("driftloop.cli",),
]


def _floor(module: str) -> int:
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                    best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    assert best is not None, f"{module} is on no floor of FLOORS"
    return best[0]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                  if _floor(t) > _floor(m))


def test_imports_point_down_only():
    graph = _graph()
    assert {_floor(m) for m in graph} == set(range(len(FLOORS)))  # every floor is inhabited
    assert _upward(graph) == []


def test_an_upward_import_is_found():
    assert _upward({"driftloop.data.ingest": {"driftloop.decide.drift"},
                    "driftloop.decide.drift": {"driftloop.data.schema"}}) == [
        "driftloop.data.ingest -> driftloop.decide.drift"]
    # the longest matching prefix decides: driftloop.notify is not driftloop's own floor
    assert _floor("driftloop.notify") == 0 and _floor("driftloop.steps.loop") == 6



def test_no_module_over_600_lines_without_a_reason():
    long = []
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 600:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Longer than 600 lines" not in doc:
                long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert long == []


def _calls(tree: ast.AST, owner: str | None = None) -> set[str]:
    """Names called in ``tree`` (``owner.name(...)`` only when ``owner`` is given)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if owner is None and isinstance(f, ast.Name):
                out.add(f.id)
            elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                  and f.value.id == owner):
                out.add(f.attr)
    return out


def test_a_component_calls_one_step_and_the_loop_calls_the_same_steps():
    from driftloop.kfp.components import COMPONENTS

    bodies = {f.name: _calls(f, "steps")
              for module in sorted((ROOT / "kfp").glob("components*.py"))
              for f in ast.parse(module.read_text()).body
              if isinstance(f, ast.FunctionDef) and f.decorator_list}
    assert set(bodies) == set(COMPONENTS), set(bodies) ^ set(COMPONENTS)
    assert all(len(c) == 1 for c in bodies.values()), bodies
    called = set().union(*bodies.values())
    loop = _calls(ast.parse((ROOT / "steps" / "loop.py").read_text()))
    # every step of the pipeline's body runs in process too; the exit handler's step is
    # the loop's own try/except (record_failure)
    assert called - {"exit_step"} <= loop, called - loop
    assert {"run_ingest", "run_drift", "run_decide", "run_train", "run_evaluate",
            "run_promote"}.isdisjoint(loop)  # no second path around the steps


def _libraries_loaded_by(*step_names: str) -> list[str]:
    """The heavy libraries a fresh interpreter holds after resolving ``step_names``."""
    import subprocess
    import sys

    heavy = {"sklearn", "scipy", "pandas", "pyarrow", "joblib", "yaml"}
    code = ("import sys\nfrom driftloop import steps\n"
            + "".join(f"steps.{name}\n" for name in step_names)
            + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(heavy)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    return __import__("ast").literal_eval(out)


def test_the_light_tasks_never_import_scikit_learn_or_scipy():
    # a task is a fresh interpreter: pandas alone costs it 0.5-1 s of import
    assert _libraries_loaded_by("notify_step", "promote_step", "exit_step") == []
    # the drift merge reads profiles and the champion's card, never its pickled model
    assert "sklearn" not in _libraries_loaded_by("drift_merge_step")
    # and the lazy package still names every step a component body calls
    import driftloop.steps as steps

    assert callable(steps.train_step) and "drift_step" in dir(steps)
    with __import__("pytest").raises(AttributeError):
        steps.no_such_step  # noqa: B018
