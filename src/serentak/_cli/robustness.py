"""``serentak demo``'s robustness scene: a worker killed in the middle of a map.

Not one of the tutorial's examples: it shows what the tutorial's section 5
does not, what happens to ``Pool.map`` when a worker dies under it (SIGKILL,
as the kernel's out-of-memory killer sends it). The stdlib's Pool waits for
ever for the dead worker's result; serentak's raises ``WorkerLostError`` at
once, naming the signal, starts a new worker, and the same pool carries on.

The scene runs like the examples: as a script of its own in a fresh
interpreter (through :func:`serentak._cli.seed.run_example`), shown with its code
and its live output, then checked.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from typing import Final

from . import seed as _seed

# The name that selects the scene on the command line: ``serentak demo robustness``.
KEY: Final = "robustness"

SCENE: Final = _seed.Example(
    section=KEY,
    title="A worker killed in the middle of a map",
    code=f"""{_seed.IMPORT_LINE}
import os
import signal

def square(n):
    if n == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    return n * n

if __name__ == "__main__":
    with multiprocessing.Pool(processes=2) as pool:
        try:
            print(pool.map(square, [1, 2, 3, 4, 5]))
        except multiprocessing.WorkerLostError as error:
            print("WorkerLostError:", error)
        print(pool.map(square, [1, 2, 4, 5]))  # the same pool, a new worker in place
""",
    expected=(
        "WorkerLostError: worker process <pid> was killed by SIGKILL (...) while running the task",
        "[1, 4, 16, 25]",
    ),
    ordered=True,
    explanation=(
        "Section 5's Pool.map again, but the worker that gets 3 is killed (SIGKILL, as the"
        " kernel's out-of-memory killer sends it). The stdlib's Pool would wait for ever;"
        " serentak's map raises WorkerLostError at once, naming the signal, starts a new"
        " worker, and the same pool carries on."
    ),
)


def output_is_right(lines: list[str]) -> bool:
    """Did the scene print the error (naming SIGKILL), then the pool's next result?"""
    return (
        len(lines) == 2
        and lines[0].startswith("WorkerLostError: worker process ")
        and "SIGKILL" in lines[0]
        and lines[1] == SCENE.expected[1]
    )


def demo_scene(
    start_method: str | None, sections: Sequence[str], say: Callable[[str], None]
) -> list[str]:
    """Show the scene (unless ``sections`` leaves it out) in the demo's style.

    Args:
        start_method: the start method to run it under; None for the default.
        sections: the sections the demo was asked for; empty for all.
        say: prints one line of the demo.

    Returns:
        ``[KEY]`` if the scene did not print what it should, else ``[]``.
    """
    if sections and KEY not in sections:
        return []
    say("")
    say(f"§5+  (serentak) {SCENE.title}")
    say(textwrap.indent(textwrap.fill(SCENE.explanation, 76), "  "))
    say(textwrap.indent(SCENE.code.rstrip(), "  │ ", lambda line: True))
    say("  output:")
    run = _seed.run_example(SCENE, start_method, on_line=lambda line: say(f"  > {line}"))
    ok = run.returncode == 0 and output_is_right(run.lines)
    verdict = (
        "as it should: the map failed at once with the signal named, and the pool carried on"
        if ok
        else "NOT what it should print: " + " / ".join(SCENE.expected)
    )
    say(f"  {verdict}   ({run.seconds:.2f} s)")
    if run.stderr.strip():
        say(textwrap.indent(run.stderr.rstrip(), "  ! "))
    return [] if ok else [KEY]
