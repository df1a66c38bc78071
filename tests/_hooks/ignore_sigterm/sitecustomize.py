"""TEST-ONLY: a process whose command line contains ``$VERIML_TEST_IGNORE_SIGTERM`` ignores
SIGTERM, whoever installs a handler for it later (uvicorn does), so the test can show that
``veriml up`` kills a child that hangs on stop after its ``--grace``.

Python imports this module at start-up only when this folder is on ``PYTHONPATH``, which
only tests/integration/test_up_supervisor.py sets; nothing under ``src/`` knows of it.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

_MARKER = os.environ.get("VERIML_TEST_IGNORE_SIGTERM")

if _MARKER:
    _install = signal.signal

    def _signal(signum: int, handler: Any) -> Any:
        if signum == signal.SIGTERM and _MARKER in " ".join(sys.argv):
            return _install(signum, signal.SIG_IGN)
        return _install(signum, handler)

    signal.signal = _signal
