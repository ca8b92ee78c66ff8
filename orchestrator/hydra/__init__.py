"""Ory Hydra as a real workload: its migration corpus (release file lists, popx's apply order) and a
generated population at scale for the v1.11.10 -> v2.3.0 end-to-end run (``bluegreen demo --scenario hydra``).
"""

from __future__ import annotations

from .corpus import (
    TESTDATA_NEEDS_2X,
    V1_11_10_EXTRA,
    V1_11_10_RANGE,
    CorpusMissing,
    HydraFile,
    apply_like_popx,
    corpus_dir,
    in_v1_11_10,
    migrations,
    with_testdata,
)
from .load import REVOCATION_LOG, at_v1_11_10, load
from .population import BAD_ROWS, INJECTED, Progress, Scale, inject_bad_rows, populate

__all__ = [
    "BAD_ROWS",
    "INJECTED",
    "REVOCATION_LOG",
    "TESTDATA_NEEDS_2X",
    "V1_11_10_EXTRA",
    "V1_11_10_RANGE",
    "CorpusMissing",
    "HydraFile",
    "Progress",
    "Scale",
    "apply_like_popx",
    "at_v1_11_10",
    "corpus_dir",
    "in_v1_11_10",
    "inject_bad_rows",
    "load",
    "migrations",
    "populate",
    "with_testdata",
]
