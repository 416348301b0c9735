"""What travels by reference and what by value, and fds beside a pickle."""

from __future__ import annotations

import os
import pickle
import sys
import types

import pytest

from serentak._ipc import serialize as _serialize


def module_level(x: int) -> int:
    return x + 1


class ModuleLevel:
    pass


def _make_closure(offset: int) -> types.FunctionType:
    def add(x: int) -> int:
        return x + offset

    return add  # type: ignore[return-value]


def _by_value(obj: object) -> bool:
    """True if the pickle of ``obj`` embeds cloudpickle's by-value payload."""
    return b"cloudpickle" in _serialize.dumps(obj)


def test_importable_objects_go_by_reference() -> None:
    assert not _by_value(module_level)
    assert not _by_value(ModuleLevel)
    assert not _by_value(os.path.join)
    assert _serialize.loads(_serialize.dumps(module_level)) is module_level


def test_lambdas_closures_and_local_classes_go_by_value() -> None:
    class Local:
        value = 5

    square = lambda x: x * x  # noqa: E731 (a lambda is the point)
    closure = _make_closure(10)
    for obj in (square, closure, Local):
        assert _by_value(obj)
    assert _serialize.loads(_serialize.dumps(square))(4) == 16
    assert _serialize.loads(_serialize.dumps(closure))(1) == 11
    assert _serialize.loads(_serialize.dumps(Local)).value == 5


def test_main_module_functions_go_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    exec("def triple(x):\n    return 3 * x\n", main.__dict__)
    monkeypatch.setitem(sys.modules, "__main__", main)
    payload = _serialize.dumps(main.triple)
    assert b"cloudpickle" in payload
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    assert _serialize.loads(payload)(5) == 15  # found without the defining module


def test_plain_data_round_trips_with_protocol_5() -> None:
    data = {"a": [1, 2.5, None, True], "b": (b"x", bytearray(b"y")), "c": {1, 2}}
    payload = _serialize.dumps(data)
    assert payload[1] == 5  # PROTO 5
    assert _serialize.loads(payload) == data


def test_reentrant_dumps_from_a_reduce() -> None:
    class Nested:
        def __reduce__(self) -> tuple[object, ...]:
            return pickle.loads, (_serialize.dumps([1, 2, 3]),)

    assert _serialize.loads(_serialize.dumps([Nested(), 4])) == [[1, 2, 3], 4]


def test_handles_refuse_to_travel_outside_a_start() -> None:
    with pytest.raises(RuntimeError, match="Thing objects should only be shared"):
        _serialize.fd_to_send(0, "Thing")
    with _serialize.sending_fds(spawning=False) as fds:
        with pytest.raises(RuntimeError, match="through inheritance"):
            _serialize.fd_to_send(0, "Thing")
        assert _serialize.fd_to_send(0, "Conn", inheritance_only=False) == 0
        assert _serialize.fd_to_send(0, "Conn", inheritance_only=False) == 0  # once per fd
    assert fds == [0]


def test_received_fds_are_closed_after_unpickling() -> None:
    read_end, write_end = os.pipe()
    with _serialize.receiving_fds([read_end, write_end]):
        assert _serialize.fd_received(1) == write_end
    for fd in (read_end, write_end):
        with pytest.raises(OSError):
            os.fstat(fd)
    with pytest.raises(RuntimeError, match="outside of serentak's transport"):
        _serialize.fd_received(0)


# ---- functions of __main__: one namespace in the receiver ------------------------------


def _main_module(source: str) -> types.ModuleType:
    main = types.ModuleType("__main__")
    exec(source, main.__dict__)
    return main


MAIN_SOURCE = """
state = None
limit = 3

def read():
    return (state, limit)

def helper():
    return "helper"

def call_helper():
    return helper()
"""


def test_functions_of_main_join_the_receivers_main(monkeypatch: pytest.MonkeyPatch) -> None:
    sender = _main_module(MAIN_SOURCE)
    monkeypatch.setitem(sys.modules, "__main__", sender)
    payload = _serialize.dumps(sender.read)
    receiver = types.ModuleType("__main__")
    vars(receiver)["state"] = 41  # set there by an initializer, say
    monkeypatch.setitem(sys.modules, "__main__", receiver)
    read = _serialize.loads(payload)
    assert read.__globals__ is vars(receiver)
    assert read() == (41, 3)  # the receiver's value kept, the missing name added
    assert vars(receiver)["limit"] == 3


def test_main_namespace_given_for_a_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from serentak._ipc import byvalue

    sender = _main_module(MAIN_SOURCE)
    monkeypatch.setitem(sys.modules, "__main__", sender)
    payload = _serialize.dumps(sender.read)
    namespace = byvalue.new_main_namespace()
    with byvalue.main_namespace(namespace):
        read = _serialize.loads(payload)
    assert read.__globals__ is namespace
    assert read() == (None, 3)
    assert _serialize.loads(payload).__globals__ is vars(sender)  # outside the block


def test_only_a_child_follows_the_senders_redefinitions(monkeypatch: pytest.MonkeyPatch) -> None:
    sender = _main_module(MAIN_SOURCE)
    monkeypatch.setitem(sys.modules, "__main__", sender)
    first = _serialize.dumps(sender.call_helper)
    exec("def helper():\n    return 'redefined'\n", sender.__dict__)
    second = _serialize.dumps(sender.call_helper)

    receiver = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", receiver)
    assert _serialize.loads(first)() == "helper"
    assert _serialize.loads(second)() == "helper"  # not a child: its definitions stay

    receiver = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", receiver)
    monkeypatch.setattr(_serialize, "_follow_sender", True)
    assert _serialize.loads(first)() == "helper"
    kept = vars(receiver)["helper"]
    assert _serialize.loads(first)() == "helper"
    assert vars(receiver)["helper"] is kept  # the same code: kept as it is
    assert _serialize.loads(second)() == "redefined"
    vars(receiver)["helper"] = lambda: "bound here"
    assert _serialize.loads(first)() == "bound here"  # the child's own binding stays


def test_code_keeps_its_file_and_brings_source_only_the_sender_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import linecache

    cell = "x = 1\n\ndef in_cell():\n    return 1 / 0\n"
    linecache.cache["<cell-3>"] = (len(cell), None, cell.splitlines(True), "<cell-3>")
    try:
        main = types.ModuleType("__main__")
        exec(compile(cell, "<cell-3>", "exec"), main.__dict__)
        monkeypatch.setitem(sys.modules, "__main__", main)
        payload = _serialize.dumps(main.in_cell)
        del linecache.cache["<cell-3>"]
        function = _serialize.loads(payload)
        assert function.__code__.co_filename == "<cell-3>"
        assert linecache.getline("<cell-3>", 4) == "    return 1 / 0\n"
        assert linecache.getline("<cell-3>", 1) == ""  # only the function's own lines travel
    finally:
        linecache.cache.pop("<cell-3>", None)
