"""The ``serentak`` command: ``bench`` runs its workloads side by side and prints the ratios,
``--plot`` draws them or says how to install what it needs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serentak._cli import bench as _bench

PATIENCE = 50.0


def serentak_command(
    *args: str, blocked: tuple[str, ...] = (), tmp_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``serentak ARGS`` as a user would, with the modules in ``blocked`` not importable."""
    env = dict(os.environ)
    if blocked:
        if tmp_path is None:
            raise ValueError("blocking modules needs a directory for the stand-ins")
        shadow = tmp_path / "blocked"
        for module in blocked:
            (shadow / module).mkdir(parents=True)
            (shadow / module / "__init__.py").write_text(
                f"raise ImportError('{module} is blocked by the test')\n"
            )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "serentak", *args],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_bench_quick_prints_figures_and_ratios(start_method: str) -> None:
    run = serentak_command(
        "bench", "--quick", "--only", "apply-rtt", "--start-method", start_method
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    rows = [line for line in lines if line.startswith("apply_async round trip")]
    assert len(rows) == 2, run.stdout  # the figures, then the ratios
    figures, ratios = rows
    assert figures.split()[-2:] != ["-", "-"]  # both serentak's and the stdlib's
    assert "vs stdlib" in run.stdout
    assert ratios.split()[4].endswith("x")
    assert float(ratios.split()[4].rstrip("x")) > 0
    assert f"start method {start_method}" in run.stdout
    assert not any(line.startswith(("Queue", "Pool.map")) for line in lines)


@pytest.mark.parametrize("matplotlib", ["blocked", "as installed"])
def test_bench_plot_draws_or_says_how_to_install(matplotlib: str, tmp_path: Path) -> None:
    picture = tmp_path / "bench.png"
    blocked = ("matplotlib",) if matplotlib == "blocked" else ()
    run = serentak_command(
        "bench",
        "--quick",
        "--only",
        "apply-rtt",
        "--plot",
        str(picture),
        blocked=blocked,
        tmp_path=tmp_path,
    )
    if blocked or importlib.util.find_spec("matplotlib") is None:
        assert run.returncode == 2
        assert "--plot needs matplotlib" in run.stderr
        assert "pip install 'serentak[bench]'" in run.stderr
        assert run.stdout == ""  # said before measuring anything, not after
        assert not picture.exists()
    else:
        assert run.returncode == 0, run.stderr
        assert f"plot written to {picture}" in run.stdout
        assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_bench_array_workloads_without_numpy_say_so(tmp_path: Path) -> None:
    run = serentak_command(
        "bench", "--quick", "--only", "map-sum-small", blocked=("numpy",), tmp_path=tmp_path
    )
    assert run.returncode == 2
    assert "need numpy" in run.stderr
    assert "pip install numpy" in run.stderr
    assert run.stdout == ""


def test_bench_rejects_an_unknown_workload() -> None:
    run = serentak_command("bench", "--only", "no-such-workload")
    assert run.returncode == 2
    assert "map-tiny" in run.stderr  # the choices are listed


def _results(
    unit: _bench.Unit, ours: float, theirs: float
) -> tuple[_bench.Results, _bench.Workload]:
    workload = _bench.Workload("w", "w", unit, _bench.WorkloadKind.POOL, lambda pool: 0.0)
    libraries = [
        _bench.Library(_bench.SERENTAK, "0", None, None),
        _bench.Library(_bench.STDLIB, "0", None, None),
    ]
    results = _bench.Results([workload], libraries, rounds=3, start_method="fork")
    results.samples[workload.name, _bench.SERENTAK] = [ours, ours * 10, ours / 10]
    results.samples[workload.name, _bench.STDLIB] = [theirs]
    return results, workload


@pytest.mark.parametrize(
    ("unit", "ours", "theirs", "faster"),
    [(_bench.GB_PER_S, 4.0, 2.0, 2.0), (_bench.MICROSECONDS, 50.0, 100.0, 2.0)],
)
def test_ratios_read_as_speed_whichever_way_the_unit_goes(
    unit: _bench.Unit, ours: float, theirs: float, faster: float
) -> None:
    results, workload = _results(unit, ours, theirs)
    assert results.median(workload, _bench.SERENTAK) == ours
    assert results.speed_ratio(workload, _bench.SERENTAK, _bench.STDLIB) == faster
    assert f"{faster:.2f}x" in _bench.format_table(results)


def test_array_goal_needs_both_the_ratio_and_the_absolute_figure() -> None:
    goal = _bench.Goal(ratio=10.0, bound=3.0)
    for ours, theirs, met in ((4.0, 0.3, True), (4.0, 1.0, False), (2.0, 0.1, False)):
        results, workload = _results(_bench.GB_PER_S, ours, theirs)
        workload = _bench.Workload(
            "w", "w", _bench.GB_PER_S, _bench.WorkloadKind.POOL, len, goal=goal
        )
        results.workloads = [workload]
        assert results.goal_met(workload) is met
    assert "met" in _bench.format_table(results)


def test_array_goal_is_judged_against_the_copy_speed_of_the_same_run() -> None:
    goal = _bench.Goal(of_copy=0.5)
    for ours, copy, met in ((6.0, 10.0, True), (4.0, 10.0, False), (4.0, None, None)):
        results, _ = _results(_bench.GB_PER_S, ours, 0.5)
        workload = _bench.Workload(
            "w", "w", _bench.GB_PER_S, _bench.WorkloadKind.POOL, len, goal=goal
        )
        results.workloads = [workload]
        results.copy_gb_s = copy
        assert results.goal_met(workload) is met
    results.copy_gb_s = 10.0
    assert ">= 50% of np.copyto: NOT met" in _bench.format_table(results)
    assert _bench.copy_speed_gb_s(mib=4, repeat=2) > 0


def test_a_round_trip_goal_is_a_ceiling() -> None:
    goal = _bench.Goal(bound=50.0)
    for ours, met in ((45.0, True), (55.0, False)):
        results, _ = _results(_bench.MICROSECONDS, ours, 150.0)
        workload = _bench.Workload(
            "w", "w", _bench.MICROSECONDS, _bench.WorkloadKind.POOL, len, goal=goal
        )
        results.workloads = [workload]
        assert results.goal_met(workload) is met
        assert f"<= 50 us: {'met' if met else 'NOT met'}" in _bench.format_table(results)


def test_a_goal_against_a_library_not_measured_cannot_be_told() -> None:
    goal = _bench.Goal(ratio=1.0, against="faster_fifo")
    results, _ = _results(_bench.GB_PER_S, 9.0, 1.0)
    workload = _bench.Workload("w", "w", _bench.GB_PER_S, _bench.WorkloadKind.QUEUE, len, goal=goal)
    results.workloads = [workload]
    assert results.goal_met(workload) is None


def test_a_loaded_goal_is_judged_against_its_quiet_row_of_the_same_run() -> None:
    quiet = _bench.Workload("quiet", "quiet", _bench.GB_PER_S, _bench.WorkloadKind.QUEUE, len)
    loaded = _bench.Workload(
        "loaded",
        "loaded",
        _bench.GB_PER_S,
        _bench.WorkloadKind.QUEUE,
        len,
        goal=_bench.Goal(against=_bench.STDLIB, of_row="quiet", keep=0.8),
    )
    libraries = [
        _bench.Library(_bench.SERENTAK, "0", None, None),
        _bench.Library(_bench.STDLIB, "0", None, None),
    ]
    # Quiet: 4x the stdlib. Loaded: 3.6x keeps 90% of it, 2.8x only 70%.
    for loaded_ours, met in ((3.6, True), (2.8, False)):
        results = _bench.Results([quiet, loaded], libraries, rounds=1, start_method="fork")
        results.samples["quiet", _bench.SERENTAK] = [4.0]
        results.samples["quiet", _bench.STDLIB] = [1.0]
        results.samples["loaded", _bench.SERENTAK] = [loaded_ours]
        results.samples["loaded", _bench.STDLIB] = [1.0]
        assert results.goal_met(loaded) is met
        verdict = "met" if met else "NOT met"
        assert f"vs stdlib >= 80% of quiet's: {verdict}" in _bench.format_table(results)
    results.samples.pop(("quiet", _bench.STDLIB))
    assert results.goal_met(loaded) is None  # the quiet ratio is unknown


def test_a_cpu_map_goal_is_judged_against_the_serial_run_of_the_same_run() -> None:
    goal = _bench.Goal(ratio=1.0, of_serial=1.85)
    for ours, serial, met in ((0.38, 0.72, True), (0.40, 0.72, False), (0.38, None, None)):
        results, _ = _results(_bench.SECONDS, ours, 0.40)
        workload = _bench.Workload(
            "map-cpu", "w", _bench.SECONDS, _bench.WorkloadKind.POOL, len, goal=goal
        )
        results.workloads = [workload]
        results.samples = {("map-cpu", lib): v for (_, lib), v in results.samples.items()}
        results.serial_s = serial
        assert results.goal_met(workload) is met
    results.serial_s = 0.72
    table = _bench.format_table(results)
    assert ">= 1x stdlib and >= 1.85x serial: met" in table
    assert "serentak's map is 1.89x that" in table
    assert _bench.serial_seconds(1, 1) > 0


def test_every_row_of_the_full_bench_has_a_goal() -> None:
    rows = _bench.workloads(_bench.FULL)
    assert all(row.goal is not None for row in rows)
    names = {row.name for row in rows}
    for channel in ("queue", "pipe"):
        for message in ("int", "100B", "tuple", "str", "dict", "floats", "1MiB"):
            assert f"{channel}-{message}" in names
    assert {
        "apply-rtt",
        "apply-rtt-p99",
        "map-tiny",
        "map-cpu",
        "spawn-start",
        "value-lock",
        "queue-1MiB-loaded",
    } <= names


@pytest.mark.parametrize("only", ["pipe-tuple", "value-lock", "spawn-start", "queue-1MiB-loaded"])
def test_bench_quick_new_rows_measure_both_libraries(only: str) -> None:
    run = serentak_command("bench", "--quick", "--only", only, "--start-method", "fork")
    assert run.returncode == 0, run.stderr
    assert "vs stdlib" in run.stdout
    assert "error" not in run.stdout, run.stdout
