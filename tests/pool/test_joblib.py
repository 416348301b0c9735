"""serentak.joblib: joblib's Parallel, and scikit-learn's n_jobs=, on a serentak pool.

Every test runs under every start method (``ctx``, given to the backend as
``context=``). The backend keeps its executors between Parallel calls; the
``kept_workers_stopped`` fixture stops them after each test, as the leak check
requires.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import joblib
import pytest

import _pool_targets
import serentak
import serentak.joblib


@pytest.fixture(autouse=True)
def kept_workers_stopped() -> Iterator[None]:
    yield
    serentak.joblib.shutdown()


def on_serentak(ctx: Any, n_jobs: int = 2, **options: Any) -> Any:
    return joblib.parallel_config(
        backend="serentak", n_jobs=n_jobs, context=ctx.get_start_method(), **options
    )


def test_parallel_runs_on_serentak_workers(ctx: Any) -> None:
    with on_serentak(ctx):
        results = joblib.Parallel()(joblib.delayed(_pool_targets.pool_pid)(i) for i in range(1000))
    assert [value for value, _ in results] == list(range(1000))
    pids = {pid for _, pid in results}
    assert 1 <= len(pids) <= 2
    with on_serentak(ctx):
        again = joblib.Parallel()(joblib.delayed(_pool_targets.pool_pid)(i) for i in range(10))
    assert {pid for _, pid in again} <= pids  # the workers were kept


def test_return_as_generator_and_lambdas(ctx: Any) -> None:
    with on_serentak(ctx):
        results = joblib.Parallel(return_as="generator")(
            joblib.delayed(lambda x: x * 3)(i) for i in range(50)
        )
        assert list(results) == [i * 3 for i in range(50)]


def test_an_error_propagates_and_the_backend_goes_on(ctx: Any) -> None:
    with on_serentak(ctx), pytest.raises(ValueError, match="item 7 is bad"):
        joblib.Parallel()(joblib.delayed(_pool_targets.joblib_fail_on)(7, i) for i in range(20))
    with on_serentak(ctx):
        assert joblib.Parallel()(
            joblib.delayed(_pool_targets.pool_square)(i) for i in range(5)
        ) == [
            0,
            1,
            4,
            9,
            16,
        ]


def test_a_dead_worker_surfaces_as_worker_lost_error(ctx: Any) -> None:
    with on_serentak(ctx), pytest.raises(serentak.WorkerLostError, match="SIGKILL"):
        joblib.Parallel(batch_size=1)(
            joblib.delayed(_pool_targets.joblib_die_on)(3, i) for i in range(8)
        )


def test_more_workers_than_allowed_is_an_error(ctx: Any) -> None:
    with (
        on_serentak(ctx, n_jobs=4, max_workers=2),
        pytest.raises(ValueError, match=r"n_jobs=4 .*max_workers=2"),
    ):
        joblib.Parallel()(joblib.delayed(_pool_targets.pool_square)(i) for i in range(3))


def test_scikit_learn_cross_val_score_runs_on_it(ctx: Any) -> None:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    features, labels = load_iris(return_X_y=True)
    with on_serentak(ctx):
        scores = cross_val_score(
            DecisionTreeClassifier(random_state=0), features, labels, cv=4, n_jobs=2
        )
    assert len(scores) == 4
    assert all(score > 0.8 for score in scores)
    assert serentak.joblib.kept_workers() == 2  # the folds ran on serentak's workers
