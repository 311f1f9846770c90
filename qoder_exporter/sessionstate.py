"""The state file's part about sessions (version 3): runs awaiting their sessions, and the
per-deployment reason, token, credit and list-cost counters of resolved runs."""

from __future__ import annotations

import math
from typing import Any

from .outcomes import REASONS, TOKEN_KINDS
from .sync import DeploymentState, PendingSession


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
