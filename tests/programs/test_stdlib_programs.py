"""Whole programs written for the stdlib, run with only the import changed.

Each program in this folder imports ``multiprocessing``; the test runs it as
written and again with ``import serentak as multiprocessing`` (and ``from
serentak... import`` for its submodules), under each start method, and the two
runs must print the same and exit the same. They follow the documentation's
example programs (a Pool of every method, queue-fed workers, a custom
manager, shared memory with NumPy, Listener/Client), in this project's words.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from _scripts import run_script

HERE = Path(__file__).parent
PROGRAMS = sorted(p.name for p in HERE.glob("*.py") if not p.name.startswith("test_"))
START_METHODS = ("fork", "spawn", "forkserver")


def with_start_method(source: str, method: str) -> str:
    """``source`` with its main block starting by choosing ``method``."""
    choose = f"    import multiprocessing; multiprocessing.set_start_method({method!r}, force=True)"
    lines = source.splitlines()
    main = lines.index('if __name__ == "__main__":')
    return "\n".join([*lines[: main + 1], choose, *lines[main + 1 :]]) + "\n"


def on_serentak(source: str) -> str:
    """``source`` with only its imports changed: the user's one-line port."""
    source = re.sub(
        r"^(\s*)import multiprocessing\b",
        r"\1import serentak as multiprocessing",
        source,
        flags=re.M,
    )
    return re.sub(r"^(\s*)from multiprocessing\b", r"\1from serentak", source, flags=re.M)


@pytest.mark.slow
@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("program", PROGRAMS)
def test_prints_what_the_stdlib_prints(program: str, method: str, tmp_path: Path) -> None:
    source = with_start_method((HERE / program).read_text(), method)
    (tmp_path / "stdlib").mkdir()
    (tmp_path / "serentak").mkdir()
    reference = tmp_path / "stdlib" / program
    ported = tmp_path / "serentak" / program
    reference.write_text(source)
    ported.write_text(on_serentak(source))
    expected = run_script(reference)
    got = run_script(ported)
    assert expected.returncode == 0, expected.stderr  # the program itself is right
    assert (got.returncode, got.stdout) == (expected.returncode, expected.stdout), got.stderr
    assert "Traceback" not in got.stderr, got.stderr


def test_the_port_changes_only_imports() -> None:
    source = "import multiprocessing\nfrom multiprocessing.managers import BaseManager\nx = 1\n"
    assert (
        on_serentak(source)
        == "import serentak as multiprocessing\nfrom serentak.managers import BaseManager\nx = 1\n"
    )
