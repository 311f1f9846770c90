"""The state file's part about sessions (version 3): runs awaiting their sessions, and the
per-deployment reason, token, credit and list-cost counters of resolved runs; version 4 added
the tokens-per-run histogram."""

from __future__ import annotations

import math
from typing import Any

from .outcomes import REASONS, TOKEN_KINDS
from .sync import SESSION_TOKEN_BUCKETS, DeploymentState, Histogram, PendingSession

# A histogram's sum of tokens: 2**53 runs of 1e12 tokens each is far below it.
_MAX_SUM = 1e30


class SessionStateError(ValueError):
    """A value in the sessions part that this exporter would not have written."""


def dump(st: DeploymentState) -> dict[str, Any]:
    return {
        # run id -> [session id, trigger, history]
        "sessions": {r: [p.session_id, p.trigger, p.history] for r, p in st.sessions.items()},
        "reasons": st.reasons,
        "tokens": st.tokens,
        "credits": st.credits,
        "list_cost_usd": st.list_cost_usd,
        "session_tokens": (
            {"counts": st.session_tokens.counts, "sum": st.session_tokens.total}
            if st.session_tokens
            else None
        ),
    }


def restore(st: DeploymentState, d: dict[str, Any]) -> None:
    """Fill st from a version 3 deployment entry; raises on anything out of bounds."""
    for run_id, (session_id, trigger, history) in d["sessions"].items():
        if not isinstance(session_id, str) or not 0 < len(session_id) <= 128:
            raise SessionStateError(f"bad session id for run {str(run_id)[:40]!r}")
        if trigger is not None and not isinstance(trigger, str):
            raise SessionStateError("bad trigger of an awaited run")
        if run_id in st.runs and not st.runs[run_id].accounted:
            st.sessions[str(run_id)] = PendingSession(session_id, trigger, bool(history))
    st.reasons = _counts(d["reasons"], REASONS)
    st.tokens = _counts(d["tokens"], TOKEN_KINDS)
    st.credits = _amount(d["credits"])
    st.list_cost_usd = _amount(d["list_cost_usd"])


def restore_v4(st: DeploymentState, d: dict[str, Any]) -> None:
    """The field version 4 added: the tokens-per-run histogram (None: no run gave tokens)."""
    raw = d["session_tokens"]
    if raw is None:
        return
    if not isinstance(raw, dict) or not isinstance(raw["counts"], list):
        raise SessionStateError("session_tokens: malformed")
    counts = raw["counts"]
    if len(counts) != len(SESSION_TOKEN_BUCKETS) + 1 or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 2**53 for c in counts
    ):
        raise SessionStateError("session_tokens: bad counts")
    total = _amount(raw["sum"])
    if total is None or total > _MAX_SUM:
        raise SessionStateError("session_tokens: bad sum")
    st.session_tokens = Histogram(list(counts), total)


def _counts(raw: dict[str, Any], known: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in raw.items():
        if key not in known or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SessionStateError(f"bad count {str(key)[:40]!r}")
        out[key] = value
    return out


def _amount(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SessionStateError("bad amount")
    amount = float(value)
    if not math.isfinite(amount) or amount < 0:
        raise SessionStateError("bad amount")
    return amount
