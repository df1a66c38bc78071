"""Injected faults for crash tests: the inference service calls ``on_fault(point)`` at the
points where a crash matters, and production passes no callback (docs/coordinator.md,
"Schema and migrations").

``VERIML_UNSAFE_TEST_CRASH_AFTER_LOG_APPEND=1`` in a coordinator's environment makes the app
build its inference service with :func:`kill_after_log_append`, which SIGKILLs the process
right after a log append: the gap between the append and the stored answer that the crash
test exercises.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping

__all__ = ["AFTER_LOG_APPEND", "CRASH_AFTER_APPEND", "Fault", "from_environment"]

Fault = Callable[[str], None]
AFTER_LOG_APPEND = "after-log-append"
CRASH_AFTER_APPEND = "VERIML_UNSAFE_TEST_CRASH_AFTER_LOG_APPEND"
_log = logging.getLogger(__name__)


def kill_after_log_append(point: str) -> None:
    """SIGKILL this process at :data:`AFTER_LOG_APPEND` (nothing is flushed or closed)."""
    if point == AFTER_LOG_APPEND:
        os.kill(os.getpid(), signal.SIGKILL)


def from_environment(environ: Mapping[str, str] = os.environ) -> Fault | None:
    """The fault callback the environment asks for (``None`` unless a crash test set it;
    a warning is logged when one is on)."""
    if environ.get(CRASH_AFTER_APPEND) != "1":
        return None
    _log.warning("%s is set: the coordinator kills itself after a log append", CRASH_AFTER_APPEND)
    return kill_after_log_append
