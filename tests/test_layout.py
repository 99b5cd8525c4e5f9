"""The layout's promises, checked on the source: imports flow one way, and SQL lives in storage/.

docs/architecture.md draws the arrows these tests hold the code to.
"""

from __future__ import annotations

import ast
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
