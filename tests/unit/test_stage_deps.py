"""Each DVC stage lists its own code in ``deps``: every project module its entry point imports at module level.

A stage whose deps miss a module it runs is not re-run when that module changes, and its recorded result (a
metric, a gate's verdict) then describes code that no longer exists. Imports inside functions are left out: they
belong to paths a stage may not take (the server's registry resolution, for one, when the loadtest stage serves a
folder).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "registry", "deploy", "mlrelease")
DVC_FILES = ("dvc.yaml", "deploy/dvc.yaml")
# What a stage runs besides its entry point's imports: the loadtest stage starts the server as a process (whose
# main imports the app when it runs), and Locust loads the locustfile.
MORE_ENTRIES = {"loadtest": ("deploy.serving.__main__", "deploy.serving.app", "deploy.loadtest.locustfile")}


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_level_imports(path: Path) -> set[str]:
    """Project modules ``path`` imports when it is imported: statements outside functions, in ``if``, ``try`` and
    class bodies too, but not under ``if TYPE_CHECKING`` (``from a.b import c`` may name module a.b.c)."""
    names: set[str] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text())]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo += ast.iter_child_nodes(node)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def is_inert(path: Path) -> bool:
    """A module of a docstring and constants only (a package's ``__init__`` with ``__version__``): it runs nothing."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr | ast.Assign) and isinstance(node.value, ast.Constant) for node in body)


def code_of(entry: str) -> set[str]:
    """Repository paths of the modules ``python -m entry`` runs: its imports, theirs, and parent packages."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(module_level_imports(path))
    return {str(path.relative_to(REPO)) for path in seen if not is_inert(path)}


def stages() -> list[tuple[str, str, str, list[str]]]:
    found = []
    for dvc_file in DVC_FILES:
        for name, stage in yaml.safe_load((REPO / dvc_file).read_text())["stages"].items():
            command = re.search(r"python -m ([\w.]+)", stage["cmd"])
            if command:
                deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])]
                found.append((dvc_file, name, command.group(1), deps))
    return found


def test_the_check_sees_each_stage_and_follows_imports() -> None:
    names = {name for _, name, _, _ in stages()}
    assert {"prepare", "validate", "train", "evaluate", "export", "register", "loadtest", "build"} <= names
    assert "pipelines/model.py" in code_of("pipelines.register")  # through pipelines.common
    assert {"deploy/loadtest/runner.py", "mlrelease/core/net.py"} <= code_of("deploy.loadtest.stage")
    assert "pipelines/__init__.py" not in code_of("pipelines.train")  # a docstring changes no result
    assert "mlrelease/core/modelcard.py" in code_of("deploy.serving.app")  # the loadtest stage's server


@pytest.mark.parametrize(("dvc_file", "stage", "entry", "deps"), stages(), ids=lambda value: str(value))
def test_every_module_a_stage_runs_is_in_its_deps(dvc_file: str, stage: str, entry: str, deps: list[str]) -> None:
    covered = [dep.rstrip("/") for dep in deps]
    runs = set().union(*(code_of(name) for name in (entry, *MORE_ENTRIES.get(stage, ()))))
    missing = sorted(path for path in runs if not any(path == dep or path.startswith(dep + "/") for dep in covered))
    assert missing == [], f"{dvc_file} stage {stage!r} runs {missing} but does not list them in deps"
