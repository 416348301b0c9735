"""The public surface: serentak's names against the stdlib's multiprocessing."""

from __future__ import annotations

import importlib
import inspect
import multiprocessing
import multiprocessing.managers
import multiprocessing.reduction
from types import ModuleType
from typing import Any

import pytest

import serentak
import serentak.connection
import serentak.managers

# Public modules and the stdlib module each mirrors.
MIRRORS = {
    "serentak": "multiprocessing",
    "serentak.connection": "multiprocessing.connection",
    "serentak.managers": "multiprocessing.managers",
    "serentak.pool": "multiprocessing.pool",
    "serentak.dummy": "multiprocessing.dummy",
    "serentak.dummy.connection": "multiprocessing.dummy.connection",
    "serentak.reduction": "multiprocessing.reduction",
    "serentak.sharedctypes": "multiprocessing.sharedctypes",
    "serentak.shared_memory": "multiprocessing.shared_memory",
}
# Names of the stdlib not provided yet, each with the issue that brings it.
NOT_YET: dict[str, set[str]] = {}
# Names in serentak's __all__ that the stdlib's lacks: ours alone.
EXTRAS = {
    "serentak": {
        "LockOwnerDiedWarning",
        "MemoryLimitError",
        "PoolTerminatedError",
        "AsyncPool",
        "ProcessPoolExecutor",
        "WorkerLostError",
        "task_rng",
        "worker_state",
    },
}
# Public names the documentation (or everyday stdlib code) uses outside __all__.
DOCUMENTED = {
    "serentak": ["SUBDEBUG", "SUBWARNING", "reducer"],
    "serentak.connection": [
        "AuthenticationError",
        "BufferTooShort",
        "Connection",
        "answer_challenge",
        "arbitrary_address",
        "deliver_challenge",
        "families",
    ],
    "serentak.managers": [
        "AcquirerProxy",
        "Array",
        "ArrayProxy",
        "AutoProxy",
        "BarrierProxy",
        "BaseListProxy",
        "BasePoolProxy",
        "ConditionProxy",
        "DictProxy",
        "EventProxy",
        "IteratorProxy",
        "ListProxy",
        "MakeProxyType",
        "Namespace",
        "NamespaceProxy",
        "PoolProxy",
        "RemoteError",
        "Server",
        "SharedMemoryServer",
        "State",
        "Value",
        "ValueProxy",
        "all_methods",
        "public_methods",
    ],
    "serentak.reduction": ["ACKNOWLEDGE", "AbstractReducer", "HAVE_SEND_HANDLE"],
}
# Callables whose parameters must be the stdlib's (names, order, defaults).
SIGNATURES = [
    ("serentak.connection", "Listener"),
    ("serentak.connection", "Client"),
    ("serentak.connection", "answer_challenge"),
    ("serentak.managers", "BaseProxy"),
    ("serentak.managers", "AutoProxy"),
    ("serentak.managers", "BaseManager.register"),
    ("serentak.managers", "BaseManager.start"),
    ("serentak.managers", "Token"),
    ("serentak.reduction", "send_handle"),
    ("serentak.reduction", "recv_handle"),
    ("serentak.reduction", "sendfds"),
    ("serentak.reduction", "recvfds"),
    ("serentak.reduction", "dump"),
]


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


@pytest.mark.parametrize(("ours", "theirs"), MIRRORS.items())
def test_all_is_the_stdlibs(ours: str, theirs: str) -> None:
    stdlib = set(_public(importlib.import_module(theirs)))
    module = set(_public(importlib.import_module(ours)))
    assert module - stdlib == EXTRAS.get(ours, set())
    assert not stdlib - module - NOT_YET.get(theirs, set())


def test_no_name_is_left_for_later() -> None:
    assert NOT_YET == {}


@pytest.mark.parametrize(("ours", "names"), DOCUMENTED.items())
def test_documented_names_outside_all(ours: str, names: list[str]) -> None:
    module = importlib.import_module(ours)
    stdlib = importlib.import_module(MIRRORS[ours])
    for name in names:
        assert hasattr(stdlib, name), f"{MIRRORS[ours]}.{name} (fix the table)"
        assert hasattr(module, name), f"{ours}.{name}"


@pytest.mark.parametrize(("ours", "path"), SIGNATURES)
def test_signatures_are_the_stdlibs(ours: str, path: str) -> None:
    def resolve(module: str) -> Any:
        found: Any = importlib.import_module(module)
        for part in path.split("."):
            found = getattr(found, part)
        return found

    def parameters(obj: Any) -> list[tuple[str, object]]:
        signature = inspect.signature(obj)
        return [(p.name, p.default) for p in signature.parameters.values() if p.name != "self"]

    assert parameters(resolve(ours)) == parameters(resolve(MIRRORS[ours]))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_contexts_have_the_stdlibs_api(method: str) -> None:
    stdlib = {name for name in dir(multiprocessing.get_context(method)) if name[0] != "_"}
    ours = {name for name in dir(serentak.get_context(method)) if name[0] != "_"}
    assert not stdlib - ours


def test_exceptions_and_helpers_are_the_stdlibs() -> None:
    errors = ("ProcessError", "BufferTooShort", "TimeoutError", "AuthenticationError")
    for name in errors:
        for base in errors:
            ours = issubclass(getattr(serentak, name), getattr(serentak, base))
            assert ours == issubclass(
                getattr(multiprocessing, name), getattr(multiprocessing, base)
            )
    assert serentak.connection.AuthenticationError is serentak.AuthenticationError
    assert serentak.managers.ProcessError is serentak.ProcessError
    assert serentak.freeze_support() is None  # nothing to do outside a frozen Windows program
    assert serentak.allow_connection_pickling() is None


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
