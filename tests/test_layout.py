"""The layout's promises, checked on the source: imports flow one way, and SQL lives in storage/.

docs/architecture.md draws the arrows these tests hold the code to.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# (package, prefixes its modules may not import, why)
FORBIDDEN = [
    ("models", ("workers", "api", "storage"), "the model and its objectives know nothing of training or storage"),
    ("storage", ("workers", "api", "models"), "storage is the bottom layer"),
    ("selfsup/spec.py", ("workers", "api", "storage", "torch"), "the job spec is read by the API, without torch"),
    (
        "workers/data",
        (
            "workers.training",
            "workers.tasks",
            "workers.train",
            "workers.prepare",
            "workers.ingest",
            "workers.curate",
            "api",
        ),
        "the data pipeline comes before the training core",
    ),
    (
        "workers/training",
        (
            "workers.tasks",
            "workers.train",
            "workers.prepare",
            "workers.ingest",
            "workers.curate",
            "workers.celery_app",
            "api",
        ),
        "the training core knows nothing of tasks or the database loop",
    ),
    ("api", ("workers.data", "workers.training", "workers.train", "torch", "models"), "the API never trains"),
    (
        "client/selfsup_client",
        ("selfsup", "api", "workers", "models", "storage", "torch", "transformers"),
        "the client installs alone (pip install ./client): it talks to the server over HTTP only",
    ),
]


def _modules(target: str) -> list[Path]:
    path = REPO / target
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize(("target", "forbidden", "why"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_imports_flow_one_way(target: str, forbidden: tuple[str, ...], why: str) -> None:
    offending = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules(target)
        for name in _imports(path)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]
    assert not offending, f"{why}:\n" + "\n".join(offending)


def test_sql_is_written_only_in_storage() -> None:
    sql_builders = {"select", "update", "insert", "delete", "text"}
    offending = []
    for package in ("api", "workers", "models", "selfsup"):
        for path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module in ("sqlalchemy", "sqlalchemy.sql"):
                    used = sorted(sql_builders & {alias.name for alias in node.names})
                    if used:
                        offending.append(f"{path.relative_to(REPO)} imports {', '.join(used)} from sqlalchemy")
    assert not offending, "build queries in storage/crud:\n" + "\n".join(offending)


def test_only_process_group_joins_and_leaves_a_process_group() -> None:
    """A job's ranks join and leave their process group through `workers.training.ranks.process_group` alone,
    which makes a trainer let go of DDP before the group is destroyed (else a rank may hang as it ends)."""
    calls = {"init_process_group", "destroy_process_group"}
    home = REPO / "workers" / "training" / "ranks.py"
    offending = [
        f"{path.relative_to(REPO)}:{node.lineno} calls {node.func.attr}"
        for package in ("api", "workers", "models", "storage", "selfsup")
        for path in _modules(package)
        if path != home
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in calls
    ]
    assert not offending, "use workers.training.ranks.process_group:\n" + "\n".join(offending)


SERVER_PACKAGES = ("selfsup", "api", "workers", "models", "storage", "torch", "transformers")

_IMPORT_WITH_THE_SERVER_BLOCKED = f"""
import importlib.abc, sys
blocked = {SERVER_PACKAGES!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"the client imported {{name}}")
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", {str(REPO)!r})]
import selfsup_client, selfsup_client.cli
from selfsup_client import Client, AsyncClient
Client("http://127.0.0.1:9", "key").close()
assert not [m for m in sys.modules if m.split(".")[0] in blocked], sorted(sys.modules)
"""


def test_the_client_imports_without_the_server() -> None:
    """`selfsup_client` and its command line load with every server package (and torch) unimportable."""
    env = {"PYTHONPATH": str(REPO / "client"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITH_THE_SERVER_BLOCKED], cwd="/", env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_client_distribution_depends_on_no_server_package() -> None:
    client = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]
    names = {
        d.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for d in client["dependencies"]
    }
    assert not names & {"torch", "transformers", "selfsup", "fastapi", "sqlalchemy", "celery"}, names
    server = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "selfsup-client" in server["dependencies"]  # installed from ./client by ./dev and the Dockerfile
