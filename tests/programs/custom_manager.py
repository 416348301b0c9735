"""A custom manager: a registered class with chosen methods exposed, a generator behind
its own proxy type, and a module returned through a proxy."""

from __future__ import annotations

import operator
import types
from collections.abc import Iterator
from multiprocessing import freeze_support
from multiprocessing.managers import BaseManager, BaseProxy
from typing import Any


class Greeter:
    def hello(self) -> str:
        return "hello from hello()"

    def bye(self) -> str:
        return "hello from bye()"

    def _secret(self) -> str:
        return "hello from _secret()"


def squares() -> Iterator[int]:
    yield from (i * i for i in range(10))


class GeneratorProxy(BaseProxy):
    _exposed_ = ("__next__",)

    def __iter__(self) -> GeneratorProxy:
        return self

    def __next__(self) -> Any:
        return self._callmethod("__next__")


def operator_module() -> types.ModuleType:
    return operator


class MyManager(BaseManager):
    pass


MyManager.register("Greeter", Greeter)
MyManager.register("Secretive", Greeter, exposed=("bye", "_secret"))
MyManager.register("squares", squares, proxytype=GeneratorProxy)
MyManager.register("operator", operator_module)


def main() -> None:
    with MyManager() as manager:
        plain: Any = manager.Greeter()  # type: ignore[attr-defined]
        print(plain.hello(), "|", plain.bye(), "|", hasattr(plain, "_secret"))
        print(sorted(plain._exposed_))
        secretive: Any = manager.Secretive()  # type: ignore[attr-defined]
        print(secretive.bye(), "|", secretive._secret(), "|", hasattr(secretive, "hello"))
        print(" ".join(f"<{i}>" for i in manager.squares()))  # type: ignore[attr-defined]
        op: Any = manager.operator()  # type: ignore[attr-defined]
        print("add:", op.add(23, 45), "pow:", op.pow(2, 94))


if __name__ == "__main__":
    freeze_support()
    main()
