"""The tutorial's examples, verbatim but for `import serentak as multiprocessing`,
run as scripts under every start method: each prints what the tutorial says."""

from __future__ import annotations

import pytest

from serentak._cli import seed as _seed


@pytest.mark.parametrize("example", _seed.EXAMPLES, ids=lambda e: f"section-{e.section}")
def test_example_prints_what_the_tutorial_says(example: _seed.Example, start_method: str) -> None:
    run = _seed.run_example(example, start_method, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert example.matches(run.lines), run.lines


def test_examples_are_the_tutorials_code() -> None:
    for example in _seed.EXAMPLES:
        assert example.code.startswith(_seed.IMPORT_LINE + "\n")
        assert "import multiprocessing" not in example.code.replace(_seed.IMPORT_LINE, "")


def test_lock_lets_one_process_in_at_a_time(start_method: str) -> None:
    # Section 8.1: three workers each hold the lock for a second.
    run = _seed.run_example(_seed.BY_SECTION["8.1"], start_method, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.seconds >= 3.0


def test_daemon_stops_with_the_main_process(start_method: str) -> None:
    # Section 9: the daemon loops for ever; the program still ends right after
    # the main process's 5 s, which means the daemon was stopped.
    run = _seed.run_example(_seed.BY_SECTION["9"], start_method, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.lines[-1] == "Main process selesai"
    assert run.seconds < 7.0


def test_demo_robustness_scene(start_method: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The robustness scene: a worker SIGKILLed in the middle of a map; the demo shows the
    # error, naming the signal, then the same pool's next result.
    from serentak._cli import main as cli

    assert cli.main(["demo", "--start-method", start_method, "robustness"]) == 0
    out = capsys.readouterr().out
    shown = [line.removeprefix("  > ") for line in out.splitlines() if line.startswith("  > ")]
    assert len(shown) == 2, out
    assert shown[0].startswith("WorkerLostError: worker process "), out
    assert "SIGKILL" in shown[0], out
    assert "out-of-memory" in shown[0], out
    assert shown[1] == "[1, 4, 16, 25]", out
    assert "  as it should:" in out
    assert "§5+  (serentak) A worker killed in the middle of a map" in out


def test_demo_robustness_scene_is_checked() -> None:
    from serentak._cli import robustness as _robustness

    assert not _robustness.output_is_right(["[1, 4, 16, 25]"])
    assert not _robustness.output_is_right(["WorkerLostError: worker process 1 exited", "[1]"])
