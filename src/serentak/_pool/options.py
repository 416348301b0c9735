"""What a long job asks of each call: retries, a per-task memory limit, a seed, how
errors come back. Checked at the call (a bad value raises there, before any task
runs) and carried by each :class:`~serentak._pool.tasks.Task` to the engine.

::

    Pool(retries=, retry_on=, backoff=, memory_limit=, seed=)   the pool's defaults
    map(..., retries=, ..., errors=)  -->  CallOptions.of(defaults, overrides)
                                             |
    feeder / apply  ------------------------>  Task(retry=RetryPolicy, memory_limit=bytes)
    engine: a task failed  ---------------->  RetryPolicy.retries(task, error)?
                                               yes: run it again (after the backoff)
                                               no:  RetryPolicy.final(task, error)
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable
from typing import Any, Final

from serentak._exceptions import MemoryLimitError, TimeoutError, WorkerLostError

# What a task is run again for unless the call says otherwise: failures of the
# machinery (a worker that died, a task that overran), not of the task's code.
DEFAULT_RETRY_ON: Final[tuple[type[BaseException], ...]] = (WorkerLostError, TimeoutError)

_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*")


class Errors(enum.Enum):
    """What a map does with an item that failed."""

    RAISE = "raise"  # raise the first error (the stdlib's behaviour)
    RETURN = "return"  # put the exception object in the item's place


def parse_errors(errors: object) -> Errors:
    """``errors=`` checked: "raise" or "return"."""
    if isinstance(errors, Errors):
        return errors
    try:
        return Errors(errors)
    except ValueError:
        raise ValueError(f'errors must be "raise" or "return", not {errors!r}') from None


def parse_memory_limit(limit: object) -> int | None:
    """``memory_limit=`` in bytes: an int of bytes or a string such as "1GiB", "512MB".

    Raises:
        TypeError: neither an int nor a string.
        ValueError: not a positive size, or an unknown unit.
    """
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int | str):
        raise TypeError(
            f'memory_limit must be bytes (an int) or a size such as "1GiB", not {limit!r}'
        )
    if isinstance(limit, int):
        size = limit
    else:
        match = _SIZE.fullmatch(limit)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f'memory_limit {limit!r} is not a size such as "1GiB", "512MiB" or "2GB"'
            )
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"memory_limit must be positive, not {limit!r}")
    return size


def format_size(size: float) -> str:
    """``size`` bytes for people: "256.0 MiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"  # unreachable: the loop returns at GiB


def check_seed(seed: object) -> int | None:
    """``seed=`` checked: a non-negative int, or None."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, not {seed}")
    return seed


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often, and for what, a task runs again.

    Attributes:
        retries: how many more times it may run after the first (2: at most 3 runs).
        retry_on: the errors it runs again for.
        backoff: seconds before the first retry, doubling for each one after.
    """

    retries: int
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON
    backoff: float = 0.0

    @classmethod
    def of(cls, retries: object, retry_on: object, backoff: object) -> RetryPolicy:
        """The arguments checked.

        Raises:
            TypeError: ``retries`` not an int, ``retry_on`` not exception classes,
                ``backoff`` not a number.
            ValueError: ``retries`` or ``backoff`` negative.
        """
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(f"retries must be an int, not {type(retries).__name__}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        if isinstance(backoff, bool) or not isinstance(backoff, int | float):
            raise TypeError(f"backoff must be a number of seconds, not {type(backoff).__name__}")
        if not backoff >= 0:  # NaN too
            raise ValueError(f"backoff must be 0 or more seconds, not {backoff}")
        return cls(retries, _check_retry_on(retry_on), float(backoff))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before running attempt ``attempt`` (2 for the first retry)."""
        return self.backoff * 2 ** (attempt - 2) if self.backoff else 0.0

    def retries_after(self, attempt: int, error: BaseException) -> bool:
        """Whether a task whose attempt ``attempt`` failed with ``error`` runs again."""
        return attempt <= self.retries and isinstance(error, self.retry_on)


def _check_retry_on(retry_on: object) -> tuple[type[BaseException], ...]:
    if retry_on is None:
        return DEFAULT_RETRY_ON
    classes: Iterable[Any] = (
        (retry_on,) if isinstance(retry_on, type) else retry_on  # type: ignore[assignment]
    )
    try:
        checked = tuple(classes)
    except TypeError:
        raise TypeError(
            f"retry_on must be an exception class or a tuple of them, not {retry_on!r}"
        ) from None
    for cls in checked:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"retry_on must hold exception classes, not {cls!r}")
    return checked


def final_error(error: BaseException, attempts: int, first: BaseException | None) -> BaseException:
    """The error a task that ran ``attempts`` times ends with: ``error`` (the last
    attempt's), saying how many attempts were made, the first failure chained
    at the end of its ``__cause__`` chain (after the worker's traceback)."""
    if attempts <= 1:
        return error
    note = (
        f"the task failed {attempts} times (retries={attempts - 1}); the first failure is chained"
    )
    if isinstance(error, WorkerLostError | TimeoutError | MemoryLimitError) and error.args:
        # Ours: the message itself says it.
        error.args = (f"{error.args[0]} (attempt {attempts} of {attempts}: {note})",)
    else:
        notes = getattr(error, "__notes__", None)
        if not isinstance(notes, list):
            notes = []
        notes.append(note)
        try:
            error.__notes__ = notes  # type: ignore[attr-defined]  # (3.11's add_note)
        except AttributeError:
            pass  # an exception type with __slots__: the attempts attribute still says it
    try:
        error.attempts = attempts  # type: ignore[attr-defined]
    except AttributeError:
        pass
    if first is not None and first is not error:
        last = error
        seen = {id(error)}
        while last.__cause__ is not None and id(last.__cause__) not in seen:
            last = last.__cause__
            seen.add(id(last))
        if last is not first:
            last.__cause__ = first
    return error


@dataclasses.dataclass(frozen=True)
class CallOptions:
    """The long-job options of one call, checked.

    Attributes:
        retry: None when the call's tasks run once.
        memory_limit: bytes of resident memory a task's worker may reach; None for no limit.
        seed: the seed of the call's task streams (``task_rng()``); None when unseeded.
        errors: what a map does with a failed item.
    """

    retry: RetryPolicy | None = None
    memory_limit: int | None = None
    seed: int | None = None
    errors: Errors = Errors.RAISE

    @classmethod
    def of(
        cls,
        defaults: CallOptions,
        *,
        retries: object = None,
        retry_on: object = None,
        backoff: object = None,
        memory_limit: object = None,
        seed: object = None,
        errors: object = "raise",
    ) -> CallOptions:
        """``defaults`` (the pool's), overridden by what the call gave (not None)."""
        retry = defaults.retry
        if retries is not None or retry_on is not None or backoff is not None:
            base = retry or RetryPolicy(0)
            retry = RetryPolicy.of(
                base.retries if retries is None else retries,
                base.retry_on if retry_on is None else retry_on,
                base.backoff if backoff is None else backoff,
            )
        if retry is not None and retry.retries == 0:
            retry = None
        limit = defaults.memory_limit if memory_limit is None else parse_memory_limit(memory_limit)
        return cls(
            retry,
            limit,
            defaults.seed if seed is None else check_seed(seed),
            parse_errors(errors),
        )
