"""The ``serentak`` command: ``demo``, ``info`` and ``bench``.

``serentak demo`` walks the tutorial section by section: each example runs
live, as its own program, and its output is checked against what the tutorial
says it prints; then section 10's claim, processes against threads on
CPU-bound work, is measured on this machine.

``serentak bench`` measures how fast data moves (Pool.map of numpy arrays,
Queue messages, apply_async round trips, maps of tiny tasks) for serentak, the
stdlib, and loky, joblib, mpire and faster-fifo where installed, side by side
in one run, and prints the ratios; ``--plot FILE.png`` draws them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import textwrap
from collections.abc import Sequence

from serentak import __version__
from serentak._os import posix as _posix
from serentak._process.launch import DEFAULT_START_METHOD, StartMethod

from . import seed as _seed


def _say(text: str = "") -> None:
    print(text, flush=True)


def _demo(start_method: str | None, sections: Sequence[str]) -> int:
    method = start_method or DEFAULT_START_METHOD.value
    examples = [e for e in _seed.EXAMPLES if not sections or e.section in sections]
    _say(f"serentak {__version__} — the tutorial's tour, live (start method: {method})")
    _say(
        "Each example is the tutorial's code with one change: `import serentak as multiprocessing`."
    )
    failures = []
    for example in examples:
        _say()
        _say(f"§{example.section}  {example.title}")
        _say(textwrap.indent(textwrap.fill(example.explanation, 76), "  "))
        _say(textwrap.indent(example.code.rstrip(), "  │ ", lambda line: True))
        _say("  output:")
        run = _seed.run_example(example, start_method, on_line=lambda line: _say(f"  > {line}"))
        ok = run.returncode == 0 and example.matches(run.lines)
        expected = " / ".join(dict.fromkeys(example.expected))
        verdict = "as the tutorial says" if ok else "NOT what the tutorial says"
        _say(f"  {verdict}: {expected}   ({run.seconds:.2f} s)")
        if run.stderr.strip():
            _say(textwrap.indent(run.stderr.rstrip(), "  ! "))
        if not ok:
            failures.append(example.section)
    from .robustness import demo_scene  # a worker killed mid-map, the pool going on

    failures += demo_scene(start_method, sections, _say)
    if not sections or "10" in sections:
        _demo_comparison()
    _say()
    if failures:
        _say(f"{len(failures)} example(s) did not print what the tutorial says: {failures}")
        return 1
    if examples:
        _say(f"All {len(examples)} examples printed what the tutorial says.")
    return 0


def _demo_comparison() -> None:
    from .compare import compare

    _say()
    _say("§10  Perbedaan multiprocessing vs threading — measured on this machine")
    _say("  The same CPU-bound work (pure-Python arithmetic), three ways:")
    result = compare()
    _say(f"  {result.tasks} tasks, {result.workers} workers ({result.workers} usable cores)")
    rows = (
        ("one after the other", result.serial),
        (f"{result.workers} threads", result.threads),
        (f"{result.workers} processes", result.processes),
    )
    for label, seconds in rows:
        _say(f"    {label:22s} {seconds:6.2f} s   {result.serial / seconds:4.2f}x serial speed")
    _say(
        "  Threads take turns holding the GIL, so CPU-bound work gains nothing from them;"
        " processes each run their own interpreter on their own core."
    )


def _info() -> int:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    rows = {
        "serentak": __version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cores (os.cpu_count)": str(os.cpu_count()),
        "usable cores (affinity)": str(affinity),
        "start methods": ", ".join(m.value for m in StartMethod),
        "default start method": DEFAULT_START_METHOD.value,
        "pidfd": str(_posix.HAS_PIDFD),
        "memfd": str(_posix.HAS_MEMFD),
    }
    width = max(len(key) for key in rows)
    for key, value in rows.items():
        _say(f"{key:{width}s}  {value}")
    return 0


def _run_bench(
    start_method: str | None, quick: bool, only: Sequence[str], rounds: int | None, plot: str | None
) -> int:
    from . import bench as _bench

    chosen = [
        w
        for w in _bench.workloads(_bench.QUICK if quick else _bench.FULL)
        if w.name in only or not only
    ]
    try:
        if plot is not None:
            _bench.require_matplotlib()  # before minutes of measuring, not after
            if not os.path.isdir(os.path.dirname(os.path.abspath(plot))):
                raise _bench.CannotRun(f"--plot: no directory to write {plot} in")
        _bench.require_numpy(chosen)
    except _bench.CannotRun as reason:
        print(f"serentak bench: {reason}", file=sys.stderr)
        return 2
    rounds = rounds or (1 if quick else 3)
    results = _bench.run(
        chosen,
        start_method or DEFAULT_START_METHOD.value,
        rounds,
        on_progress=lambda text: print(f"running {text}", file=sys.stderr, flush=True),
    )
    _say(f"serentak bench: how fast data moves, {os.cpu_count()} CPUs")
    _say(_bench.format_table(results))
    if plot is not None:
        _bench.plot(results, plot)
        _say(f"plot written to {plot}")
    serentak_failed = any(library == _bench.SERENTAK for _, library in results.errors)
    return 1 if serentak_failed else 0


def _run_scale(start_method: str | None, quick: bool, plot: str | None) -> int:
    from . import bench as _bench
    from . import scale as _scale

    if plot is not None:
        try:
            _bench.require_matplotlib()
        except _bench.CannotRun as reason:
            print(f"serentak bench: {reason}", file=sys.stderr)
            return 2
    results = _scale.run_scale(
        start_method or DEFAULT_START_METHOD.value,
        quick,
        on_progress=lambda text: print(f"running {text}", file=sys.stderr, flush=True),
    )
    _say(f"serentak bench --scale: how costs grow, {os.cpu_count()} CPUs")
    _say(_scale.format_scale(results))
    if plot is not None:
        _scale.plot_scale(results, plot)
        _say(f"plot written to {plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``serentak`` command."""
    parser = argparse.ArgumentParser(prog="serentak", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the tutorial's tour, live, and processes vs threads")
    demo.add_argument(
        "--start-method", choices=[m.value for m in StartMethod], help="default: forkserver"
    )
    demo.add_argument("sections", nargs="*", help="only these sections (e.g. 3.1 7.2 10)")
    commands.add_parser("info", help="platform, cores, start methods")
    from .bench import WORKLOAD_NAMES

    bench = commands.add_parser(
        "bench", help="data speed against the stdlib, loky, joblib, mpire, faster-fifo"
    )
    bench.add_argument(
        "--start-method", choices=[m.value for m in StartMethod], help="default: forkserver"
    )
    bench.add_argument(
        "--quick", action="store_true", help="smaller sizes, one round (a smoke test)"
    )
    bench.add_argument(
        "--only",
        action="append",
        default=[],
        choices=WORKLOAD_NAMES,
        metavar="NAME",
        help=f"run this workload only (repeatable): {', '.join(WORKLOAD_NAMES)}",
    )
    bench.add_argument(
        "--rounds",
        type=int,
        help="rounds of each workload, median shown (default 3; 1 with --quick)",
    )
    bench.add_argument(
        "--scale",
        action="store_true",
        help="how costs grow: per-task overhead of maps of 10^3..10^6 tasks, the parent's"
        " peak memory for imap over 10^7 items, Queue throughput for 10 B..256 MiB",
    )
    bench.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the ratios to FILE.png (needs matplotlib: pip install 'serentak[bench]')",
    )
    options = parser.parse_args(argv)
    if options.command == "demo":
        return _demo(options.start_method, options.sections)
    if options.command == "bench":
        if options.rounds is not None and options.rounds < 1:
            bench.error("--rounds must be at least 1")
        if options.scale:
            return _run_scale(options.start_method, options.quick, options.plot)
        return _run_bench(
            options.start_method, options.quick, options.only, options.rounds, options.plot
        )
    return _info()


if __name__ == "__main__":
    sys.exit(main())
