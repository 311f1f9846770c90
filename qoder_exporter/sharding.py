"""Sharding: which deployments this process watches, as kube-state-metrics shards objects.

A deployment belongs to shard `sha256(deployment_id)[:8] mod total`: a stable hash (never
Python's hash(), which is salted per process), so every shard agrees on the assignment and
it is the same on every restart. Each deployment is in exactly one shard.

Automatic sharding: in a StatefulSet each pod is named `<set>-<ordinal>`; `--pod` takes that
name (`--pod=$(POD_NAME)`, as kube-state-metrics) and the ordinal is the shard. The total is
`--total-shards` (the StatefulSet's replicas): kube-state-metrics reads it from the
Kubernetes API, which this exporter never calls.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["MAX_SHARDS", "NO_SHARD", "Shard", "ShardError", "shard_from_pod", "shard_of"]

MAX_SHARDS = 1024
# A StatefulSet pod name ends in -<ordinal>; the name before it is a DNS label.
_POD_ORDINAL = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?-(0|[1-9][0-9]{0,5})")


class ShardError(ValueError):
    """A shard flag that cannot be used; the message names the flag."""


def shard_of(deployment_id: str, total: int) -> int:
    """The shard owning deployment_id among total shards."""
    digest = hashlib.sha256(deployment_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % total


@dataclass(frozen=True, slots=True)
class Shard:
    index: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.total <= MAX_SHARDS:
            raise ShardError(f"--total-shards: must be from 1 to {MAX_SHARDS}, got {self.total}")
        if not 0 <= self.index < self.total:
            raise ShardError(
                f"--shard: must be from 0 to --total-shards - 1 ({self.total - 1}), "
                f"got {self.index}"
            )

    @property
    def sharded(self) -> bool:
        return self.total > 1

    def owns(self, deployment_id: str) -> bool:
        return self.total == 1 or shard_of(deployment_id, self.total) == self.index


NO_SHARD = Shard()


def shard_from_pod(pod: str, total: int) -> Shard:
    """The shard of a StatefulSet pod: its name's ordinal suffix, e.g. qoder-exporter-2 -> 2."""
    match = _POD_ORDINAL.fullmatch(pod)
    if match is None:
        raise ShardError(
            f"--pod: expected a StatefulSet pod name ending in -<ordinal>, got {pod[:100]!r}"
        )
    index = int(match.group(2))
    if index >= total:
        raise ShardError(
            f"--pod: ordinal {index} of {pod!r} is not below --total-shards ({total}): "
            "set --total-shards to the StatefulSet's replicas"
        )
    return Shard(index, total)
