"""Cardinality control: which discovered deployments are watched, which families are published.

Pure values built by config.py; watchlist.py applies DiscoverFilter where deployments are
listed, collector.py applies MetricFilter over family names when it renders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .models import Deployment

# A deployment's status as the filter (and qoder_deployment_info) sees it: the API keeps
# "active" on an archived deployment, so archived is told apart here.
DEPLOYMENT_STATUSES = ("active", "paused", "archived")


def deployment_status(dep: Deployment) -> str:
    return "archived" if dep.archived else dep.status


@dataclass(frozen=True)
class Selector:
    """Matches a deployment when every criterion given matches (a list: any of its items).

    name is a regular expression matched against the whole name (anchored, as Prometheus'
    relabelling regexes are).
    """

    name: re.Pattern[str] | None = None
    agent_ids: frozenset[str] | None = None
    statuses: frozenset[str] | None = None

    def matches(self, dep: Deployment) -> bool:
        if self.name is not None and not self.name.fullmatch(dep.name):
            return False
        if self.agent_ids is not None and dep.agent_id not in self.agent_ids:
            return False
        return self.statuses is None or deployment_status(dep) in self.statuses


@dataclass(frozen=True)
class DiscoverFilter:
    """discover: {include: ..., exclude: ...}; a deployment is watched when it matches
    include (or include is unset) and does not match exclude."""

    include: Selector | None = None
    exclude: Selector | None = None

    def keeps(self, dep: Deployment) -> bool:
        if self.include is not None and not self.include.matches(dep):
            return False
        return self.exclude is None or not self.exclude.matches(dep)


@dataclass(frozen=True)
class MetricFilter:
    """metrics.allowlist / metrics.denylist: regexes over family names, as kube-state-metrics'
    --metric-allowlist / --metric-denylist. Each pattern is anchored; a counter matches by its
    name with or without _total. At most one of allow and deny is set (config.py checks)."""

    allow: re.Pattern[str] | None = None
    deny: re.Pattern[str] | None = None

    def keeps(self, name: str, kind: str = "gauge") -> bool:
        names = (name, name + "_total") if kind == "counter" else (name,)
        if self.allow is not None:
            return any(self.allow.fullmatch(n) for n in names)
        if self.deny is not None:
            return not any(self.deny.fullmatch(n) for n in names)
        return True


def join_patterns(patterns: list[str]) -> re.Pattern[str]:
    """One regex for a list: any of them, each whole (callers checked each compiles)."""
    return re.compile("|".join(f"(?:{p})" for p in patterns))


@dataclass(frozen=True)
class MetricsConfig:
    """The metrics: section."""

    filter: MetricFilter = MetricFilter()
    # false drops qoder_deployment_run_duration_seconds{status="failed"}: 16 series per
    # deployment with the default buckets, for a figure alerts rarely need.
    failed_duration_histogram: bool = True


# Shared default: frozen, so one instance serves every Config and Snapshot.
DEFAULT_METRICS = MetricsConfig()
