"""Build throwaway copies of the repository in which the real pipeline runs (git, DVC, MLflow sqlite)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COPIED = ("dvc.yaml", "params.yaml", "schemas", "datasets", "pipelines", "registry", "mlrelease", "deploy")
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Workspace:
    """A repository copy: its root, and the environment that points MLflow and DVC at it."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "MLRELEASE_HOME": str(self.root),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.invalid",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args), cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "dvc"), *args, check=check)

    def settings(self) -> Any:
        from mlrelease.core.settings import Settings

        return Settings(home=self.root)

    def set_params(self, **sections: dict[str, Any]) -> None:
        """Merge values into the copy's params.yaml, section by section."""
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for name, values in sections.items():
            params.setdefault(name, {}).update(values)
        path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_workspace(dest: Path) -> Workspace:
    """Copy the project's pipeline files into ``dest`` and make it a git + DVC repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    (dest / ".gitignore").write_text((REPO / ".gitignore").read_text())
    ws = Workspace(dest)
    ws.run("git", "init", "-q")
    ws.dvc("init", "-q")
    ws.run("git", "add", "-A")
    ws.run("git", "commit", "-q", "-m", "workspace")
    return ws


def rebase_registry(home: Path, old_root: Path) -> int:
    """Point a copied sqlite registry at the copy's own artifact folders (a copy keeps the original's absolute
    paths, so new versions would be written into, and tampering would reach, the original); return rows changed."""
    import sqlite3

    old, new = str(old_root), str(home)
    changed = 0
    with sqlite3.connect(home / "mlruns" / "mlflow.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [
                r[1]
                for r in db.execute(f"PRAGMA table_info('{table}')")
                if "CHAR" in r[2].upper() or "TEXT" in r[2].upper()
            ]
            for column in columns:
                sql = f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE "{column}" LIKE ?'
                changed += db.execute(sql, (old, new, f"%{old}%")).rowcount
    return changed


def copy_workspace(src: Path, dest: Path) -> None:
    """Copy a workspace without DVC's transient folder (``.dvc/tmp``: its locks): a test that runs dvc in the
    shared workspace meanwhile (``summary``, ``report``) may be rewriting them, and a half-written rwlock file in
    the copy fails every later dvc command there."""
    src = Path(src)
    transient = (src / ".dvc" / "tmp").resolve()

    def ignore(folder: str, names: list[str]) -> set[str]:
        return {name for name in names if (Path(folder) / name).resolve() == transient}

    shutil.copytree(src, dest, symlinks=True, ignore=ignore)
