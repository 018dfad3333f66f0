"""The import graph of the project: no cycle, and every arrow points down the layers.

Each import is read with ``ast``, including the ones inside functions, so a
lazy import cannot hide an arrow that runs back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Highest first. A module may import from its own layer and from the ones below it.
LAYERS = [
    "tuner.cli",  # the command line
    "tuner.search",  # running a search
    "tuner.results",  # what a search leaves: leaderboard, scores, exports, reports
    "tuner.engine",  # Ray underneath, and Ray's and Optuna's private APIs
    "tuner.storage",  # where an experiment lives: storage, its files, lock, signatures
    "tuner.engine.formats",  # the names and layout of Ray's files, which storage finds
    "tuner.spaces",  # search spaces
    "tuner._errors",  # the user-facing error every layer raises
    "tuner._lazy",  # package faces that import on first use
    "trainables.train",  # one trial: its config, inputs, loop, checkpoints, the trainable
    "trainables.models",  # the networks: registry, parts, precision, deployed graphs
    "trainables.data",  # the photos: listed, split, decoded, stored (no torch)
    "trainables",  # what every part of a trial shares: files, settings, progress
]
# Package faces above all: `python -m tuner`, and the faces of the two top packages,
# which name what the layers below them hold.
FACES = {"tuner", "tuner.__main__", "trainables"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = {module_name(p) for p in project_files()}
    return {m for m in found if m in modules and m != name}


def project_files() -> list[Path]:
    return sorted([*ROOT.glob("tuner/**/*.py"), *ROOT.glob("trainables/**/*.py")])


def layer(module: str) -> int | None:
    """The index of the longest entry of LAYERS that names ``module`` or a package of it."""
    found = [
        (len(prefix), index)
        for index, prefix in enumerate(LAYERS)
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(found)[1] if found else None


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in project_files()}


def test_every_module_has_a_layer():
    orphans = [m for m in graph() if m not in FACES and layer(m) is None]
    assert not orphans, f"modules outside every layer of {LAYERS}: {orphans}"


def test_no_import_runs_back_up_a_layer():
    upward = [
        f"{src} -> {dst}"
        for src, targets in graph().items()
        if src not in FACES
        for dst in targets
        if dst not in FACES and layer(dst) is not None and layer(dst) < layer(src)  # type: ignore[operator]
    ]
    assert not upward, "imports from a lower layer into a higher one:\n" + "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def arrows(source: str, target: str) -> list[str]:
    """Every import from a module named ``source...`` of one named ``target...``."""
    return [
        f"{src} -> {dst}"
        for src, targets in graph().items()
        if src.startswith(source)
        for dst in targets
        if dst.startswith(target)
    ]


def test_trainables_imports_nothing_from_tuner():
    assert not arrows("trainables", "tuner")


def private_owner(module: str) -> str | None:
    """The package whose private module ``module`` is (``a.b`` for ``a.b._c.d``), if any."""
    parts = module.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def test_no_package_imports_another_packages_private_modules():
    """Each package's face (its ``__init__.py``) names what other packages may use; its
    private modules (``package._x``) are its own and its subpackages'."""
    reached_in = [
        f"{src} -> {dst}"
        for src, targets in graph().items()
        for dst in targets
        if (owner := private_owner(dst)) is not None
        and src != owner
        and not src.startswith(owner + ".")
    ]
    assert not reached_in, "imports of another package's private module:\n" + "\n".join(reached_in)


def test_no_module_is_over_400_lines():
    """A module that grows past this does more than one job: split it by job."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in project_files()
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert not long, long
