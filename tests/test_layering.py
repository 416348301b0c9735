"""The package's layers import only downwards, and ``import serentak`` stays light.

The layers, lowest first, are the table below (``serentak/__init__.py`` draws
the same picture). A module may import from its own layer and the layers below
it; an import from a layer above is an error, wherever it stands (module level
or inside a function), except under ``if TYPE_CHECKING:`` and for the few late
bindings listed in ``LATE_BINDINGS`` with their reason.
"""

from __future__ import annotations

import ast
import collections
import pathlib
import subprocess
import sys

import pytest

import serentak

SOURCE = pathlib.Path(serentak.__file__).parent

# Module-name prefix -> layer rank. The longest matching prefix decides.
LAYERS: dict[str, int] = {
    "serentak._exceptions": 0,
    "serentak._logging": 0,
    "serentak._public": 0,
    "serentak._os": 1,
    "serentak._ipc": 2,
    "serentak._process": 3,
    "serentak._shared": 4,
    "serentak._pool": 5,
    "serentak._managers": 6,
    # The API: the contexts and the public modules, which only re-export.
    "serentak": 7,
    "serentak._cli": 8,
    "serentak.__main__": 8,
}

# Upward imports done on purpose, inside a function, each with its reason.
LATE_BINDINGS: dict[tuple[str, str], str] = {
    ("serentak._pool.api", "serentak._context"): (
        "a Pool made without a context takes the default one when it is created"
    ),
    ("serentak._pool.engines.thread", "serentak._context"): (
        "a ThreadPool of the default size asks the default context for cpu_count()"
    ),
    ("serentak._managers.manager", "serentak._context"): (
        "a manager made without a context starts its server with the default one"
    ),
}


def layer_of(module: str) -> int:
    best = max(
        (prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")),
        key=len,
    )
    return LAYERS[best]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """The serentak modules (or packages) that ``source`` imports at run time."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from serentak._os import posix`` imports the module serentak._os.posix.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _is_module(candidate) else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return {name for name in found if name == "serentak" or name.startswith("serentak.")}


def _is_module(name: str) -> bool:
    relative = pathlib.Path(*name.split(".")[1:])
    return (SOURCE / relative).with_suffix(".py").exists() or (SOURCE / relative).is_dir()


def upward_imports(module: str, source: str, is_package: bool) -> list[str]:
    """The imports of ``module`` that reach a layer above its own and are not allowed."""
    rank = layer_of(module)
    return sorted(
        f"{module} imports {target}"
        for target in imports_of(source, module, is_package)
        if layer_of(target) > rank
        and (module, target) not in LATE_BINDINGS
        # a package's __init__ is imported by every module under it: not a dependency
        and not (target == "serentak" and module.startswith("serentak."))
    )


def all_modules() -> list[tuple[str, str, bool]]:
    return [
        (module_name(path), path.read_text(), path.name == "__init__.py")
        for path in sorted(SOURCE.rglob("*.py"))
    ]


def test_imports_go_down_the_layers() -> None:
    problems = [
        line
        for module, source, package in all_modules()
        for line in upward_imports(module, source, package)
    ]
    assert not problems, "imports from a layer above:\n" + "\n".join(problems)


def test_an_upward_import_is_caught() -> None:
    source = "from serentak._pool.api import Pool\n"
    assert upward_imports("serentak._shared.queues", source, False) == [
        "serentak._shared.queues imports serentak._pool.api"
    ]
    inside = "def f():\n    from .._cli import bench\n"
    assert upward_imports("serentak._ipc.connection", inside, False) == [
        "serentak._ipc.connection imports serentak._cli.bench"
    ]
    typing_only = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from serentak._pool import api\n"
    )
    assert upward_imports("serentak._os.posix", typing_only, False) == []


def test_late_bindings_are_still_needed() -> None:
    used = {
        (module, target)
        for module, source, package in all_modules()
        for target in imports_of(source, module, package)
    }
    assert set(LATE_BINDINGS) <= used, "listed late bindings no module has any more"


def test_the_runtime_does_not_import_the_stdlib_machinery() -> None:
    banned = {"multiprocessing", "_multiprocessing", "concurrent.futures.process"}
    problems = []
    for module, source, _ in all_modules():
        if layer_of(module) == LAYERS["serentak._cli"]:
            continue  # the benchmark compares with the stdlib
        for node in ast.walk(ast.parse(source)):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            problems += [
                f"{module} imports {name}"
                for name in names
                if name.split(".")[0] in banned or name in banned
            ]
    assert not problems, problems


def test_no_two_private_classes_share_a_name() -> None:
    homes: dict[str, list[str]] = collections.defaultdict(list)
    for module, source, _ in all_modules():
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef):
                homes[node.name].append(module)
    # The stdlib's own public names, which its dummy/distributed variants repeat on purpose.
    stdlib_twins = {"Connection", "Listener", "Namespace", "Pool", "Value"}
    twins = {
        name: where for name, where in homes.items() if len(where) > 1 and name not in stdlib_twins
    }
    assert not twins, twins


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        (
            "import serentak",
            ("serentak._pool", "serentak._managers", "serentak._cli", "serentak.distributed"),
        ),
        (
            "import serentak.shared_memory",
            ("serentak._pool", "serentak._managers", "serentak._cli"),
        ),
        (
            "import serentak; serentak.Queue(); serentak.Lock(); serentak.Value('i')",
            ("serentak._pool", "serentak._managers"),
        ),
    ],
)
def test_import_stays_light(statement: str, absent: tuple[str, ...]) -> None:
    code = (
        f"{statement}\n"
        "import sys\n"
        "heavy = ('dask', 'distributed', 'numpy', 'tqdm')\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith(('serentak',) + heavy)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    unwanted = [
        m
        for m in loaded
        if m.startswith(absent) or m.split(".")[0] in ("dask", "distributed", "numpy", "tqdm")
    ]
    assert not unwanted, unwanted
