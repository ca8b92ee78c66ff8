"""Crash points for the fault-injection tests: ``BLUEGREEN_FAULT=<point>:<what>`` SIGKILLs the process there.

``<point>`` is ``before``, ``after`` or ``during``; ``<what>`` is an action id as a dry run renders it
(``switch:cutover:pgbouncer-app``) or a finer point a module documents (the copy engine's
``during:copy_table:<step>:<table>``). The runner calls :func:`fault` around every action it runs;
steps that run their own work (the cutover's phases, the copy engine) call it at the same ids, so
every boundary a dry run shows can be crashed at (tests/faults). Unset, it costs a dict lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "BLUEGREEN_FAULT"


def fault(point: str, what: str) -> None:
    """SIGKILL this process if ``$BLUEGREEN_FAULT`` names ``<point>:<what>``."""
    if os.environ.get(FAULT_ENV) == f"{point}:{what}":
        os.kill(os.getpid(), signal.SIGKILL)
