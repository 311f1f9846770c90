"""Random snapshot changes with tiny gzip blocks: the kept Exposition's bodies equal a fresh
Exposition's, and each gzip body decodes to the plain one (both formats, accounts too)."""

from __future__ import annotations

import gzip
import random
from dataclasses import replace

import pytest

from qoder_exporter import collector
from qoder_exporter.collector import Exposition
from qoder_exporter.filters import DEFAULT_METRICS
from qoder_exporter.snapshot import DeploymentView, Snapshot

from .test_collector import METRICS_CONFIGS, NOW, _varied_snapshot


def _mutate(rng: random.Random, v: DeploymentView) -> DeploymentView:
    k = rng.randrange(7)
    if k == 0:
        return replace(v, recent={"running": rng.randrange(5), "failed": rng.randrange(3)})
    if k == 1:
        return replace(v, totals={"failed": rng.randrange(9), "completed": rng.randrange(9)})
    if k == 2:
        return replace(v, errors={} if rng.random() < 0.5 else {"other_error": rng.randrange(4)})
    if k == 3:
        return replace(v, last_success=None if rng.random() < 0.3 else NOW - rng.randrange(99))
    if k == 4:
        return replace(v, sync_ok=not v.sync_ok)
    if k == 5:
        return replace(v, last_error="x" if v.last_error is None else None)  # not rendered
    return replace(v, consecutive_failures=rng.randrange(4))


def _step(
    rng: random.Random, deps: list[DeploymentView], base: tuple[DeploymentView, ...], n: list[int]
) -> None:
    k = rng.randrange(10)
    if k < 5 and deps:
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(deps))
            deps[i] = _mutate(rng, deps[i])
    elif k < 7:
        n[0] += 1
        deps.insert(rng.randrange(len(deps) + 1), replace(rng.choice(base), id=f"dep_new{n[0]}"))
    elif k < 9 and deps:
        deps.pop(rng.randrange(len(deps)))
    elif len(deps) > 1:
        i, j = rng.sample(range(len(deps)), 2)
        deps[i], deps[j] = deps[j], deps[i]


def _check(expo: Exposition, snap: Snapshot) -> None:
    fresh = Exposition(snap, lambda: NOW)
    for om in (False, True):
        body = expo.body(openmetrics=om, compress=False)
        assert body == fresh.body(openmetrics=om, compress=False)
        assert gzip.decompress(expo.body(openmetrics=om, compress=True)) == body


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("block", [1, 200, 700])
def test_random_changes_single(monkeypatch, seed: int, block: int) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(collector, "_BLOCK_BYTES", block)
    rng = random.Random(seed)
    varied = _varied_snapshot()
    base = varied.deployments
    deps = [replace(base[i % len(base)], id=f"dep_{i:03}") for i in range(rng.randrange(0, 30))]
    n = [0]
    missing: tuple[str, ...] = varied.missing
    metrics = DEFAULT_METRICS
    snap = replace(varied, deployments=tuple(deps))
    expo = Exposition(snap, lambda: NOW)
    for _ in range(25):
        r = rng.random()
        if r < 0.1:
            metrics = rng.choice((*METRICS_CONFIGS, DEFAULT_METRICS))
        elif r < 0.2:
            missing = tuple(f"gone{i}" for i in range(rng.randrange(3)))
        else:
            _step(rng, deps, base, n)
        snap = replace(varied, deployments=tuple(deps), missing=missing, metrics=metrics)
        expo.update(snap)
        _check(expo, snap)


@pytest.mark.parametrize("seed", range(8))
def test_random_changes_accounts(monkeypatch, seed: int) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(collector, "_BLOCK_BYTES", 300)
    rng = random.Random(seed)
    varied = _varied_snapshot()
    base = varied.deployments
    a = [replace(base[i % len(base)], id=f"dep_{i:03}") for i in range(12)]
    b = [replace(base[i % len(base)], id=f"dep_{i:03}") for i in range(0, 12, 2)]  # same ids
    n = [0]

    def snap_of() -> Snapshot:
        intl = replace(varied, account="intl", deployments=tuple(a), missing=("g1",))
        cn = replace(varied, account="cn", deployments=tuple(b), missing=())
        return replace(varied, deployments=(*a, *b), missing=("g1",), accounts=(intl, cn))

    expo = Exposition(snap_of(), lambda: NOW)
    for _ in range(25):
        _step(rng, rng.choice((a, b)), base, n)
        snap = snap_of()
        expo.update(snap)
        _check(expo, snap)
