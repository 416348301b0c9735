"""The public surface: serentak's names against the stdlib's multiprocessing."""

from __future__ import annotations

import importlib
import multiprocessing
from types import ModuleType

import pytest

import serentak

# Public modules and the stdlib module each mirrors.
MIRRORS = {
    "serentak": "multiprocessing",
    "serentak.connection": "multiprocessing.connection",
    "serentak.pool": "multiprocessing.pool",
    "serentak.dummy": "multiprocessing.dummy",
    "serentak.dummy.connection": "multiprocessing.dummy.connection",
    "serentak.sharedctypes": "multiprocessing.sharedctypes",
    "serentak.shared_memory": "multiprocessing.shared_memory",
}
# Names of the stdlib not provided yet, each with the issue that brings it.
NOT_YET = {
    "multiprocessing": {
        "Manager",  # issue 8
        "allow_connection_pickling",  # issue 8
        "get_logger",  # issue 8
        "log_to_stderr",  # issue 8
        "reducer",  # issue 8
    },
    "multiprocessing.connection": {"Client", "Listener"},  # issue 8
}


def _public(module: ModuleType) -> list[str]:
    names: list[str] = module.__all__
    return names


def test_all_is_sorted_and_unique() -> None:
    for name in MIRRORS:
        exported = _public(importlib.import_module(name))
        assert exported == sorted(set(exported)), name


def test_all_names_exist() -> None:
    for name in MIRRORS:
        module = importlib.import_module(name)
        for attribute in _public(module):
            assert hasattr(module, attribute), f"{name}.{attribute}"


@pytest.mark.parametrize(("ours", "theirs"), MIRRORS.items())
def test_every_stdlib_name_is_there(ours: str, theirs: str) -> None:
    stdlib = importlib.import_module(theirs)
    module = importlib.import_module(ours)
    missing = set(_public(stdlib)) - set(_public(module)) - NOT_YET.get(theirs, set())
    assert not missing, f"{ours} lacks {sorted(missing)}"


def test_extras_are_ours() -> None:
    extras = set(serentak.__all__) - set(multiprocessing.__all__)
    assert extras == {
        "LockOwnerDiedWarning",
        "PoolTerminatedError",
        "ProcessPoolExecutor",
        "WorkerLostError",
        "worker_state",
    }


def test_public_classes_name_the_public_path() -> None:
    for name in ("Process", "ProcessError", "TimeoutError", "WorkerLostError"):
        assert getattr(serentak, name).__module__ == "serentak"


def test_runtime_does_not_import_the_stdlib_machinery() -> None:
    import pathlib
    import re

    source = pathlib.Path(serentak.__file__).parent
    pattern = re.compile(
        r"^\s*(import|from)\s+(multiprocessing|_multiprocessing|concurrent\.futures\.process)\b",
        re.MULTILINE,
    )
    offenders = [
        str(path.relative_to(source))
        for path in source.rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
