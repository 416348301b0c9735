"""The ``multiprocessing`` logger: ``get_logger()`` and ``log_to_stderr()``, as the stdlib's.

serentak logs to the logger named ``"multiprocessing"``, the stdlib's name, so
that a program configuring that logger (``logging.getLogger("multiprocessing")``,
a ``dictConfig`` entry, ``multiprocessing.get_logger().setLevel(...)``) sees
serentak's records when it runs with ``import serentak as multiprocessing``.

Nothing is logged, and ``logging`` is not even imported, until a program asks
for the logger: the module-level helpers (``debug``, ``info``, ...) are then
no-ops, which keeps ``import serentak`` and every child's start-up cheap.

Levels: the stdlib adds two of its own, ``SUBDEBUG`` (5) below DEBUG and
``SUBWARNING`` (25) between INFO and WARNING; both are registered by name with
``logging`` when the logger is first made.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import logging

__all__ = [
    "DEFAULT_LOGGING_FORMAT",
    "LOGGER_NAME",
    "SUBDEBUG",
    "SUBWARNING",
    "debug",
    "get_logger",
    "info",
    "log_to_stderr",
    "sub_debug",
    "sub_warning",
]

LOGGER_NAME: Final = "multiprocessing"
DEFAULT_LOGGING_FORMAT: Final = "[%(levelname)s/%(processName)s] %(message)s"
SUBDEBUG: Final = 5
SUBWARNING: Final = 25
_DEBUG: Final = 10
_INFO: Final = 20

_lock = threading.Lock()
_logger: logging.Logger | None = None
_stderr_handler: logging.Handler | None = None


def _reset_lock() -> None:
    """In a forked child: the parent's lock may have been held by a thread that is gone."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock)


def get_logger() -> logging.Logger:
    """The logger serentak writes to (named ``"multiprocessing"``), made on first use.

    As the stdlib's, it does not propagate to the root logger and has no
    handler until one is added (:func:`log_to_stderr` adds one).
    """
    global _logger
    with _lock:
        if _logger is None:
            import logging

            logging.addLevelName(SUBDEBUG, "SUBDEBUG")
            logging.addLevelName(SUBWARNING, "SUBWARNING")
            logger = logging.getLogger(LOGGER_NAME)
            logger.propagate = False
            _logger = logger
        return _logger


def log_to_stderr(level: int | str | None = None) -> logging.Logger:
    """Make the logger write to stderr, in the stdlib's format; return it.

    Calling it again changes the level but adds no second handler (the
    stdlib's adds one per call, printing every record twice).

    Args:
        level: the logger's new level, if given.
    """
    global _stderr_handler
    import logging

    logger = get_logger()
    with _lock:
        if _stderr_handler is None:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter(DEFAULT_LOGGING_FORMAT))
            logger.addHandler(handler)
            _stderr_handler = handler
    if level:
        logger.setLevel(level)
    return logger


def settings_for_child() -> tuple[int | None, bool]:
    """What a spawned child needs to log as this process does: the logger's effective
    level (None if the logger was never made) and whether it writes to stderr."""
    logger = _logger
    if logger is None:
        return None, False
    return logger.getEffectiveLevel(), _stderr_handler is not None


def apply_parent_settings(level: int | None, to_stderr: bool) -> None:
    """In a spawned child: take the parent's level and stderr handler (see above)."""
    if to_stderr:
        log_to_stderr()
    if level is not None:
        get_logger().setLevel(level)


def label_records(current_name: Callable[[], str]) -> None:
    """In a child: make ``LogRecord.processName`` the child's name.

    ``logging`` names the process by asking the stdlib's ``multiprocessing``
    (when it is imported), which knows nothing of serentak's processes and
    answers ``"MainProcess"``. A record factory (``logging``'s documented hook)
    corrects that answer; a name some other machinery set is left alone.
    Installed once per process, wrapping whatever factory is in place.

    If ``logging`` is not imported yet, the factory is installed when it is
    (:class:`_LabelOnImport`): importing it in every child cost each start
    about 3.5 ms here (``logging`` pulls in ``string``, ``traceback``, ...),
    more than the rest of a forked child's start-up.
    """
    logging = sys.modules.get("logging")
    if logging is None:
        sys.meta_path.insert(0, _LabelOnImport(current_name))
        return
    _install_factory(logging, current_name)


def _install_factory(logging: Any, current_name: Callable[[], str]) -> None:
    current = logging.getLogRecordFactory()
    if getattr(current, "_serentak_names", False):
        return  # inherited through a fork from a parent that installed it

    def factory(*args: Any, **kwargs: Any) -> Any:
        record = current(*args, **kwargs)
        if record.processName == "MainProcess":
            record.processName = current_name()
        return record

    factory._serentak_names = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class _LabelOnImport:
    """A meta path finder that labels records once ``logging`` is first imported.

    It finds nothing itself: asked for ``logging``, it leaves ``sys.meta_path``,
    asks the finders behind it, and returns their spec with a loader that runs
    the real one, then installs the factory. Any other name falls through.
    """

    def __init__(self, current_name: Callable[[], str]) -> None:
        self._current_name = current_name

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "logging":
            return None
        with contextlib.suppress(ValueError):  # another thread got here first
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if find is None else find(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenLabel(spec.loader, self._current_name)
                return spec
        return None


class _ThenLabel:
    """The real loader of ``logging``, then the record factory; anything else is the real one's."""

    def __init__(self, loader: Any, current_name: Callable[[], str]) -> None:
        self._loader = loader
        self._current_name = current_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        # The module names its real loader, as if this one had never been there.
        module.__loader__ = module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _install_factory(module, self._current_name)


def _log(level: int, message: str, *args: object) -> None:
    logger = _logger
    if logger is not None:
        logger.log(level, message, *args)


def sub_debug(message: str, *args: object) -> None:
    """Log at SUBDEBUG, if the logger was asked for."""
    _log(SUBDEBUG, message, *args)


def debug(message: str, *args: object) -> None:
    """Log at DEBUG, if the logger was asked for."""
    _log(_DEBUG, message, *args)


def info(message: str, *args: object) -> None:
    """Log at INFO, if the logger was asked for."""
    _log(_INFO, message, *args)


def sub_warning(message: str, *args: object) -> None:
    """Log at SUBWARNING, if the logger was asked for."""
    _log(SUBWARNING, message, *args)
