"""bluegreen: zero-downtime blue-green migrations for PostgreSQL, driven by a YAML runbook."""

from __future__ import annotations

from .errors import BluegreenError, PlanError, StepFailed, ValidationFailed
from .plan import LoadedPlan, Plan, load_plan
from .runner import Runner, RunOptions

__version__ = "0.1.0"
__all__ = ["BluegreenError", "LoadedPlan", "Plan", "PlanError", "RunOptions", "Runner", "StepFailed",
           "ValidationFailed", "load_plan"]
