"""What rankdistill shows while it works: progress bars on its long steps and
its log lines.

Progress bars. One switch decides whether the long steps show a bar (the
teacher's rankings, the student's catalogue ranks behind DCD's corrections,
RD's ranks and the diagnostics, BD's and iBD's sampling rounds, evaluation): ``show_progress(on)``, a context
manager. The trainer sets it for its run from ``TrainConfig.progress`` and the
command line from ``--no-progress``; outside them it is off. ``None`` means
"when stderr is a terminal". Bars use ``tqdm.auto`` (widgets in Jupyter), only
on rank 0 under ``torchrun``, and only for steps that last longer than
``DELAY`` seconds (a quick evaluation every epoch shows nothing).

Log lines. rankdistill logs to ``logging.getLogger("rankdistill")`` (each
epoch, each run of a comparison, the cached rankings): used as a library it
shows them once logging is configured, by ``logging.basicConfig(level=
logging.INFO)`` or by ``log_to_stderr()``, which also keeps them from breaking
a progress bar.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

from . import distributed

__all__ = ["DELAY", "bar", "log_to_stderr", "progress_shown", "show_progress"]

# A step shorter than this never shows its bar.
DELAY = 0.5

# True, False, or None: when stderr is a terminal. Off unless a trainer, the
# command line or the user turns it on.
_SETTING: contextvars.ContextVar[bool | None] = contextvars.ContextVar("rankdistill_progress", default=False)


@contextlib.contextmanager
def show_progress(on: bool | None = True) -> Iterator[None]:
    """Within the block, rankdistill's long steps show progress bars (``on``
    True), none (False), or bars when stderr is a terminal (None)."""
    token = _SETTING.set(on)
    try:
        yield
    finally:
        _SETTING.reset(token)


def progress_shown(on: bool | None = None) -> bool:
    """Whether a bar shows now: ``on`` if given (True, False), else the
    setting of ``show_progress``; never on a process other than rank 0."""
    setting = _SETTING.get() if on is None else on
    if setting is None:
        setting = sys.stderr.isatty()
    return bool(setting) and distributed.is_main()


def bar(iterable: Iterable[Any] | None = None, *, desc: str = "", total: int | None = None, unit: str = "it",
        on: bool | None = None, **options: Any) -> tqdm:
    """A ``tqdm.auto`` bar over ``iterable`` (it iterates the same either way);
    disabled, a no-op, unless ``progress_shown(on)``. Transient (``leave=False``)
    and shown only after ``DELAY`` seconds, unless ``options`` say otherwise."""
    options = {"leave": False, "delay": DELAY, "dynamic_ncols": True, **options}
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress_shown(on), **options)


class _TqdmHandler(logging.Handler):
    """Log lines on stderr (whatever ``sys.stderr`` is when a line comes),
    written between progress bars, not through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # as logging's own handlers: never let a log line end the run
            self.handleError(record)


def log_to_stderr(level: int = logging.INFO) -> logging.Handler:
    """Show rankdistill's log lines (``logging.getLogger("rankdistill")``: one
    per epoch, per run of a comparison, ...) on stderr, as plain messages that
    do not break a progress bar, from ``level`` on. Once: a second call sets
    the level and returns the same handler. The lines no longer reach the root
    logger's handlers (no doubled lines with ``logging.basicConfig``).
    Returns the handler (``logger.removeHandler(handler)`` undoes it)."""
    logger = logging.getLogger("rankdistill")
    handler = next((h for h in logger.handlers if isinstance(h, _TqdmHandler)), None)
    if handler is None:
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    handler.setLevel(level)
    logger.setLevel(level)
    logger.propagate = False
    return handler
