"""Data movement: the snapshot engine (copy and dump), its catalog reads, checks and verification."""

from __future__ import annotations

from ..errors import BluegreenError


class PreconditionFailed(BluegreenError):
    """The clusters are not in a state the step can start from (a non-empty target, a missing capture...)."""


__all__ = ["PreconditionFailed"]
