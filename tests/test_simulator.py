"""The simulator over real HTTP, checked against /work/shared/qoder-api.md (the API facts).

Every test talks to a served Simulator with `requests`; simulated time only moves through
`sim.advance()` (a ManualClock), never by sleeping.
"""

from __future__ import annotations

import calendar
import datetime
import email.utils
import itertools
import json
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from qoder_exporter.models import RUN_ERROR_TYPES
from qoder_exporter.simulator import DeploymentSpec, Simulator

TOKEN = "pt-sim-test-4b1d"
NS = 1_000_000_000
HOUR = 3600.0
DAY = 86400.0
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
WORLD_AGE = 2 * HOUR + 10  # the shared world is this far past its start: some runs pending

STATUSES = ("pending", "running", "completed", "failed", "skipped")
TERMINAL = ("completed", "failed", "skipped")
# qoder-api.md §5.2: the documented run error.type vocabulary (the exporter's list, less
# the "other" it folds unknown values into)
DOC_ERROR_TYPES = set(RUN_ERROR_TYPES) - {"other"}
G2_RUN_KEYS = {
    "id",
    "type",
    "agent",
    "deployment_id",
    "created_at",
    "session_id",
    "error",
    "trigger_context",
}
ID_RE = re.compile(r"^(dep|drun|agent|env|sess|turn)_([0-9a-f]{32})$")
TS_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z$")
ENDPOINT_PATHS = (
    ("list_deployments", "GET", "/deployments"),
    ("get_deployment", "GET", "/deployments/{dep}"),
    ("list_runs", "GET", "/deployments/{dep}/runs"),
    ("list_all_runs", "GET", "/deployment_runs"),
    ("get_run", "GET", "/deployments/{dep}/runs/{run}"),
    ("get_run_global", "GET", "/deployment_runs/{run}"),
    ("create_run", "POST", "/deployments/{dep}/run"),
)


# ---------------------------------------------------------------- helpers


def ts_ns(text: str) -> int:
    """Parse an RFC 3339 UTC timestamp with 0-9 fractional digits to unix nanoseconds."""
    m = TS_RE.match(text)
    assert m, f"not an RFC 3339 UTC timestamp: {text!r}"
    fields = tuple(int(m.group(i)) for i in range(1, 7))
    whole = calendar.timegm((*fields, 0, 0, 0))
    frac = m.group(7) or ""
    return whole * NS + int(frac.ljust(9, "0") or "0")


def ns_of(seconds: float) -> int:
    return round(seconds * NS)


def iso(ns: int) -> str:
    """Format unix ns as an RFC 3339 UTC timestamp with nanoseconds."""
    sec, frac = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def run_key(run: dict[str, Any]) -> tuple[int, str]:
    """The list sort key: trigger (creation) time, ties broken by id."""
    return ts_ns(run["created_at"]), run["id"]


def id_ms(ident: str) -> int:
    """The unix-ms timestamp in the first 48 bits of a UUIDv7-style id."""
    m = ID_RE.match(ident)
    assert m, ident
    return int(m.group(2)[:12], 16)


class Api:
    """A tiny client for the simulated API."""

    def __init__(self, base: str, token: str | None = TOKEN) -> None:
        self.base = base
        self.token = token
        self.session = requests.Session()

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
        **params: Any,
    ) -> requests.Response:
        sent = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        sent.update(headers or {})
        return self.session.request(
            method, self.base + path, headers=sent, params=params, timeout=timeout
        )

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.request("GET", path, **params)

    def ok(self, path: str, **params: Any) -> Any:
        r = self.get(path, **params)
        assert r.status_code == 200, (path, r.status_code, r.text)
        assert r.headers["Content-Type"] == "application/json"
        return r.json()

    def post(self, path: str) -> requests.Response:
        return self.request("POST", path)

    def walk(self, path: str, cursor: str = "after_id", **params: Any) -> list[dict[str, Any]]:
        """Every item of a list, paging forward until has_more is false."""
        items: list[dict[str, Any]] = []
        query = dict(params)
        seen_cursors: set[str] = set()
        while True:
            page = self.ok(path, **query)
            items += page["data"]
            if not page["has_more"]:
                return items
            nxt = page["last_id"] if cursor == "after_id" else page["next_page"]
            assert nxt not in seen_cursors, "cursor did not advance"
            seen_cursors.add(nxt)
            query = {**params, cursor: nxt}


def assert_error(
    r: requests.Response, status: int, kind: str, request_id: str | None = None
) -> dict[str, Any]:
    """Check the documented G2 error envelope {type, request_id, error{type, message}}."""
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["type"] == "error"
    assert set(body) == {"type", "request_id", "error"}
    assert body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert set(body["error"]) <= {"type", "message", "param"}
    if request_id is None:
        uuid.UUID(body["request_id"])  # server-generated: a UUID
    else:
        assert body["request_id"] == request_id
    assert r.headers["request-id"] == body["request_id"]
    return dict(body["error"])


_closing: list[threading.Thread] = []


def _close_later(sim: Simulator) -> None:
    # close() waits for the server's 0.5 s poll loop; do that off the test's critical path
    thread = threading.Thread(target=sim.close, daemon=True)
    thread.start()
    _closing.append(thread)


@pytest.fixture(scope="module", autouse=True)
def _join_closers() -> Iterator[None]:
    yield
    for thread in _closing:
        thread.join(timeout=10)


Factory = Callable[..., tuple[Simulator, Api]]


@pytest.fixture
def make_sim() -> Iterator[Factory]:
    """Build and serve fresh simulators (default: seed 7, six deployments)."""
    made: list[tuple[Simulator, Api]] = []

    def make(**kwargs: Any) -> tuple[Simulator, Api]:
        kwargs.setdefault("seed", 7)
        kwargs.setdefault("deployments", 6)
        kwargs.setdefault("token", TOKEN)
        sim = Simulator(**kwargs)
        made.append((sim, Api(sim.serve("127.0.0.1", 0))))
        return made[-1]

    yield make
    for sim, api in made:
        api.session.close()
        _close_later(sim)


@pytest.fixture
def fresh(make_sim: Factory) -> tuple[Simulator, Api]:
    return make_sim()


class World:
    """A read-only simulator two simulated hours past its start, with cached HTTP views."""

    def __init__(self) -> None:
        self.sim = Simulator(seed=7, deployments=6, token=TOKEN)
        self.sim.advance(WORLD_AGE)
        self.api = Api(self.sim.serve("127.0.0.1", 0))
        self.now_ns = ns_of(self.sim.clock.now())
        self.deployments = self.api.walk("/deployments", limit=100)
        self.by_name = {d["name"]: d for d in self.deployments}
        self.runs = {
            d["id"]: self.api.walk(f"/deployments/{d['id']}/runs", limit=100)
            for d in self.deployments
        }
        self.all_runs = self.api.walk("/deployment_runs", limit=100)

    def dep_id(self, name: str) -> str:
        return str(self.by_name[name]["id"])


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World()
    yield w
    w.api.session.close()
    _close_later(w.sim)


def snapshot(sim: Simulator, api: Api) -> str:
    """Everything the API shows plus the truth helpers, as one canonical string."""
    deps = api.walk("/deployments", limit=100)
    out: dict[str, Any] = {"deployments": deps, "all_runs": api.walk("/deployment_runs", limit=100)}
    for dep in deps:
        d = dep["id"]
        out[d] = {
            "get": api.ok(f"/deployments/{d}"),
            "runs": api.walk(f"/deployments/{d}/runs", limit=100),
            "recent": sim.truth_recent(d, DAY),
            "finished": sim.truth_finished(d, since=sim.start - DAY),
            "last_success": sim.truth_last_success(d),
            "last_status": sim.truth_last_finished_status(d),
            "in_flight": sim.truth_in_flight(d),
        }
    return json.dumps(out, sort_keys=True)


# ---------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer pt-wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
        {"x-api-key": TOKEN},  # documented as not accepted
    ],
    ids=["missing", "wrong", "basic", "no-scheme", "empty", "x-api-key"],
)
@pytest.mark.parametrize(("endpoint", "method", "path"), ENDPOINT_PATHS)
def test_bad_credentials_get_401_envelope(
    world: World, headers: dict[str, str], endpoint: str, method: str, path: str
) -> None:
    dep = world.dep_id("repo-indexer")
    run = world.runs[dep][0]["id"]
    api = Api(world.api.base, token=None)
    r = api.request(method, path.format(dep=dep, run=run), headers=headers)
    error = assert_error(r, 401, "authentication_error")
    assert error["message"] == "Invalid API key or token."


def test_right_token_is_accepted_and_request_id_echoed(world: World) -> None:
    r = world.api.get("/deployments")
    assert r.status_code == 200
    bad = Api(world.api.base, token="nope")
    r = bad.request("GET", "/deployments", headers={"x-request-id": "req-abc-123"})
    assert_error(r, 401, "authentication_error", request_id="req-abc-123")
    # a fresh server-generated request id each time
    ids = {bad.get("/deployments").json()["request_id"] for _ in range(3)}
    assert len(ids) == 3


def test_unauthenticated_post_creates_nothing(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    dep = sim.deployment_ids()[0]
    before = sim.truth_recent(dep, 10 * DAY)
    assert_error(
        Api(api.base, token="x").post(f"/deployments/{dep}/run"), 401, "authentication_error"
    )
    assert sim.truth_recent(dep, 10 * DAY) == before


# ---------------------------------------------------------------- deployments


def test_list_deployments_shape_and_order(world: World) -> None:
    deps = world.deployments
    assert {d["id"] for d in deps} == set(world.sim.deployment_ids())
    assert len(deps) == 6
    created = [ts_ns(d["created_at"]) for d in deps]
    assert created == sorted(created, reverse=True), "newest first"
    for d in deps:
        assert re.fullmatch(r"dep_[0-9a-f]{32}", d["id"])
        assert d["type"] == "deployment"
        assert d["agent"]["type"] == "agent"
        assert re.fullmatch(r"agent_[0-9a-f]{32}", d["agent"]["id"])
        assert isinstance(d["agent"]["version"], int)
        assert re.fullmatch(r"env_[0-9a-f]{32}", d["environment_id"])
        assert d["status"] in ("active", "paused")
        assert (d["paused_reason"] is not None) == (d["status"] == "paused")
        assert d["archived_at"] is None
        cas = d["metadata"]["cas_config"]
        assert cas["session_strategy"] == "new_session"
        assert set(cas["config"]) == {"max_concurrent", "max_retries", "timeout_ms"}
        assert {"total_runs", "total_failures", "consecutive_failures"} <= set(cas["stats"])
        for key in ("created_at", "updated_at"):
            assert "." not in d[key], "deployment timestamps are whole seconds"
            ts_ns(d[key])
        assert world.api.ok(f"/deployments/{d['id']}") == d


def test_paused_and_manual_only_deployments(world: World) -> None:
    paused = world.by_name["weekly-digest"]
    assert paused["status"] == "paused"
    assert paused["paused_reason"] == {"type": "manual"}
    assert len(paused["schedule"]["upcoming_runs_at"]) == 5, "still filled while paused"
    manual = world.by_name["release-notes"]
    assert manual["schedule"] is None
    assert manual["status"] == "active"
    assert {r["trigger_context"]["type"] for r in world.runs[manual["id"]]} == {"manual"}
    # a paused deployment has no runs after it was paused
    paused_runs = world.runs[paused["id"]]
    assert paused_runs
    assert ts_ns(paused_runs[0]["created_at"]) <= ts_ns(paused["updated_at"]) + NS


def test_schedule_matches_cron_and_runs_fire_on_the_grid(world: World) -> None:
    checked = 0
    for d in world.deployments:
        schedule = d["schedule"]
        if schedule is None:
            continue
        assert schedule["type"] == "cron"
        m = re.fullmatch(r"\*/(\d+) \* \* \* \*", schedule["expression"])
        assert m, schedule["expression"]
        step = int(m.group(1)) * 60 * NS
        upcoming = [ts_ns(t) for t in schedule["upcoming_runs_at"]]
        assert len(upcoming) == 5
        assert world.now_ns < upcoming[0] <= world.now_ns + step
        assert all(b - a == step for a, b in itertools.pairwise(upcoming))
        assert all(t % step == 0 for t in upcoming)
        stats = d["metadata"]["cas_config"]["stats"]
        assert stats["next_trigger_at"] == schedule["upcoming_runs_at"][0]
        sched = [r for r in world.runs[d["id"]] if r["trigger_context"]["type"] == "schedule"]
        for run in sched:
            offset = ts_ns(run["created_at"]) % step
            assert 0 <= offset <= 3 * NS, "fires at the cron time plus a small jitter"
            checked += 1
        assert schedule["last_run_at"] == sched[0]["created_at"][:19] + "Z"
    assert checked > 100


def test_a_schedule_at_a_cron_minute_fires_there(make_sim: Factory) -> None:
    """phase_s: an hourly schedule at minute 17 and a daily one at 09:30, as cron has them."""
    specs = [
        DeploymentSpec("hourly-17", 3600.0, phase_s=17 * 60.0),
        DeploymentSpec("daily-0930", 86400.0, phase_s=9.5 * 3600),
    ]
    sim, api = make_sim(deployments=specs, history_s=2 * 86400.0)
    sim.advance(86400.0)
    for d in api.walk("/deployments", limit=100):
        step, at, cron = {
            "hourly-17": (3600, 17 * 60, "17 * * * *"),
            "daily-0930": (86400, 9.5 * 3600, "30 9 * * *"),
        }[d["name"]]
        assert d["schedule"]["expression"] == cron
        upcoming = [ts_ns(t) for t in d["schedule"]["upcoming_runs_at"]]
        assert all(t % (step * NS) == at * NS for t in upcoming)
        runs = api.walk(f"/deployments/{d['id']}/runs", limit=100)
        assert len(runs) >= 2
        for run in runs:
            offset = (ts_ns(run["created_at"]) - int(at * NS)) % (step * NS)
            assert 0 <= offset <= 3 * NS, (d["name"], run["created_at"])


def test_deployment_stats_agree_with_runs(world: World) -> None:
    for d in world.deployments:
        runs = world.runs[d["id"]]
        stats = d["metadata"]["cas_config"]["stats"]
        assert stats["total_runs"] == len(runs)
        assert stats["total_failures"] == sum(r["status"] == "failed" for r in runs)
        finished = sorted(
            (r for r in runs if r["status"] in ("completed", "failed")),
            key=lambda r: (ts_ns(r["completed_at"]), r["id"]),
        )
        trailing = 0
        for r in reversed(finished):
            if r["status"] != "failed":
                break
            trailing += 1
        assert stats["consecutive_failures"] == trailing, d["name"]
        assert stats["last_triggered_at"] == runs[0]["created_at"][:19] + "Z"
        config = d["metadata"]["cas_config"]["config"]
        assert config["max_concurrent"] == world.sim.spec(d["id"]).max_concurrent


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "paused"}, {"weekly-digest"}),
        (
            {"status": "active"},
            {
                "repo-indexer",
                "dependency-audit",
                "release-notes",
                "pr-triage",
                "daily-status-report",
            },
        ),
    ],
)
def test_list_deployments_status_filter(
    world: World, params: dict[str, str], expected: set[str]
) -> None:
    names = {d["name"] for d in world.api.ok("/deployments", **params)["data"]}
    assert names == expected


def test_list_deployments_agent_and_created_filters(world: World) -> None:
    target = world.deployments[2]
    got = world.api.ok("/deployments", agent_id=target["agent"]["id"])["data"]
    assert [d["id"] for d in got] == [target["id"]]
    assert world.api.ok("/deployments", agent_id="agent_" + "0" * 32)["data"] == []
    # created_at shows whole seconds; the id carries the creation millisecond
    bound = target["created_at"]
    bound_ms = ts_ns(bound) // 1_000_000
    for op, keep in (("gte", int.__ge__), ("lte", int.__le__)):
        got = world.api.ok("/deployments", **{f"created_at[{op}]": bound})["data"]
        expected = [d["id"] for d in world.deployments if keep(id_ms(d["id"]), bound_ms)]
        assert [d["id"] for d in got] == expected
        assert 0 < len(expected) < 6


@pytest.mark.parametrize("limit", [1, 2, 4, 5])
def test_list_deployments_paging(world: World, limit: int) -> None:
    items = world.api.walk("/deployments", limit=limit)
    assert [d["id"] for d in items] == [d["id"] for d in world.deployments]
    first = world.api.ok("/deployments", limit=limit)
    assert first["has_more"] is (limit < 6)
    back = world.api.ok("/deployments", limit=limit, before_id=world.deployments[limit]["id"])
    assert [d["id"] for d in back["data"]] == [d["id"] for d in world.deployments[:limit]]
    assert back["has_more"] is False


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/deployments/dep_" + "0" * 32, "not_found_error"),
        ("/deployments/nonsense/runs", "not_found_error"),
        ("/deployments/dep_" + "0" * 32 + "/runs/drun_" + "0" * 32, "not_found_error"),
        ("/deployment_runs/drun_" + "0" * 32, "not_found_error"),
        ("/no/such/endpoint", "not_found_error"),
    ],
)
def test_missing_resources_are_404(world: World, path: str, kind: str) -> None:
    assert_error(world.api.get(path), 404, kind)


# ---------------------------------------------------------------- runs: shape


def test_run_fields_by_status(world: World) -> None:
    seen: Counter[str] = Counter()
    for dep_id, runs in world.runs.items():
        for r in runs:
            status = r["status"]
            seen[status] += 1
            assert r["type"] == "deployment_run"
            assert r["deployment_id"] == dep_id
            assert r["trigger_context"]["type"] in ("manual", "schedule")
            assert r["triggered_at"] == r["created_at"]
            assert "error" in r, "error is an explicit null when absent"
            started = status in ("running", "completed", "failed")
            assert ("session_id" in r) is started, (status, r)
            assert ("cas_run_extras" in r) is started
            assert ("completed_at" in r) is (status in TERMINAL)
            assert ("duration_ms" in r) is (status in ("completed", "failed"))
            if started:
                assert re.fullmatch(r"sess_[0-9a-f]{32}", r["session_id"])
                extras = r["cas_run_extras"]
                assert extras["attempt"] == 1
                assert re.fullmatch(r"turn_[0-9a-f]{32}", extras["turn_id"])
                assert ts_ns(extras["started_at"]) >= ts_ns(r["created_at"])
                assert ts_ns(extras["started_at"]) <= world.now_ns
            if "duration_ms" in r:
                span = ts_ns(r["completed_at"]) - ts_ns(r["cas_run_extras"]["started_at"])
                assert r["duration_ms"] == span // 1_000_000
            if status == "skipped":
                assert r["completed_at"] == r["created_at"]
                assert r["error"] is None
            if status in TERMINAL:
                assert ts_ns(r["completed_at"]) <= world.now_ns
            else:
                assert r["error"] is None
    assert all(seen[s] > 0 for s in STATUSES), seen


def test_failed_runs_carry_documented_errors(world: World) -> None:
    types: Counter[str] = Counter()
    for r in world.all_runs:
        if r["status"] == "failed":
            assert set(r["error"]) == {"type", "message"}
            assert isinstance(r["error"]["message"], str)
            assert r["error"]["message"]
            types[r["error"]["type"]] += 1
        else:
            assert r["error"] is None
    assert set(types) <= DOC_ERROR_TYPES
    assert len(types) >= 3, types


def test_agent_of_runs_is_the_deployments(world: World) -> None:
    agents = {d["id"]: d["agent"] for d in world.deployments}
    for r in world.all_runs:
        assert r["agent"] == agents[r["deployment_id"]]


def test_ids_are_uuidv7_and_time_ordered(world: World) -> None:
    ids: list[tuple[str, str]] = []  # (id, the timestamp its ms prefix must match)
    for d in world.deployments:
        ids += [(d["id"], d["created_at"]), (d["agent"]["id"], ""), (d["environment_id"], "")]
        # deployment created_at is whole seconds, its id carries the milliseconds
        assert id_ms(d["id"]) // 1000 == ts_ns(d["created_at"]) // NS
    for r in world.all_runs:
        ids.append((r["id"], r["created_at"]))
        if "session_id" in r:
            ids.append((r["session_id"], r["cas_run_extras"]["started_at"]))
            ids.append((r["cas_run_extras"]["turn_id"], ""))
    for ident, stamp in ids:
        m = ID_RE.match(ident)
        assert m, ident
        u = uuid.UUID(m.group(2))
        assert u.version == 7, ident
        assert u.variant == uuid.RFC_4122, ident
        assert m.group(2)[16] in "89ab"
        if stamp and not ident.startswith("dep_"):
            assert id_ms(ident) == ts_ns(stamp) // 1_000_000, (ident, stamp)
    # newest first: ms prefixes never increase down the list, the sort key strictly falls
    prefixes = [id_ms(r["id"]) for r in world.all_runs]
    assert prefixes == sorted(prefixes, reverse=True)
    keys = [run_key(r) for r in world.all_runs]
    assert all(a > b for a, b in itertools.pairwise(keys))
    assert len({i for i, _ in ids}) == len(ids), "ids are unique"


def test_timestamps_are_rfc3339_with_0_to_9_fraction_digits(world: World) -> None:
    stamps: list[str] = []
    for d in world.deployments:
        stamps += [d["created_at"], d["updated_at"]]
        if d["schedule"]:
            stamps += d["schedule"]["upcoming_runs_at"]
            stamps.append(d["schedule"]["last_run_at"])
        stats = d["metadata"]["cas_config"]["stats"]
        stamps += [stats[k] for k in ("last_triggered_at", "next_trigger_at") if k in stats]
    for r in world.all_runs:
        stamps += [r["created_at"], r["triggered_at"]]
        stamps += [r[k] for k in ("completed_at",) if k in r]
        if "cas_run_extras" in r:
            stamps.append(r["cas_run_extras"]["started_at"])
    digits: Counter[int] = Counter()
    for s in stamps:
        m = TS_RE.match(s)
        assert m, s
        frac = m.group(7) or ""
        digits[len(frac)] += 1
        assert not frac.endswith("0"), f"trailing zeros are trimmed (RFC3339Nano): {s}"
        # cross-check the nanosecond parser with the standard library (microsecond precision)
        micro = s[:26] + "Z" if len(frac) > 6 else s
        parsed = datetime.datetime.fromisoformat(micro.replace("Z", "+00:00"))
        assert (parsed - EPOCH) // datetime.timedelta(microseconds=1) == ts_ns(s) // 1000
    assert digits[0] > 0
    assert digits[9] > 0
    assert len(digits) >= 6, digits


# ---------------------------------------------------------------- runs of one deployment


def test_list_runs_newest_first_with_default_limit(world: World) -> None:
    dep = world.dep_id("pr-triage")
    page = world.api.ok(f"/deployments/{dep}/runs")
    assert len(page["data"]) == 20, "default limit is 20"
    assert page["has_more"] is True
    keys = [run_key(r) for r in page["data"]]
    assert keys == sorted(keys, reverse=True)
    assert page["data"] == world.runs[dep][:20]


@pytest.mark.parametrize("limit", [1, 7, 20, 100])
@pytest.mark.parametrize("cursor", ["after_id", "page"])
def test_walking_runs_gives_each_exactly_once_in_order(
    world: World, limit: int, cursor: str
) -> None:
    name = {1: "release-notes", 7: "repo-indexer"}.get(limit, "pr-triage")
    dep = world.dep_id(name)
    items = world.api.walk(f"/deployments/{dep}/runs", cursor=cursor, limit=limit)
    ids = [r["id"] for r in items]
    assert len(ids) == len(set(ids))
    assert ids == [r["id"] for r in world.runs[dep]]
    keys = [run_key(r) for r in items]
    assert keys == sorted(keys, reverse=True)
    # ground truth: every run of the history, by status
    truth = world.sim.truth_recent(dep, 30 * DAY)
    assert sum(truth.values()) == len(items)
    assert dict(Counter(r["status"] for r in items)) == {k: v for k, v in truth.items() if v}


def test_page_envelope_semantics(world: World) -> None:
    dep = world.dep_id("repo-indexer")
    runs = world.runs[dep]
    limit = 50
    cursor: dict[str, str] = {}
    pages = 0
    while True:
        page = world.api.ok(f"/deployments/{dep}/runs", limit=limit, **cursor)
        data = page["data"]
        assert set(page) == {"data", "first_id", "last_id", "has_more", "next_page"}
        assert page["first_id"] == data[0]["id"]
        assert page["last_id"] == data[-1]["id"]
        start = pages * limit
        assert [r["id"] for r in data] == [r["id"] for r in runs[start : start + limit]]
        assert page["has_more"] is (start + limit < len(runs))
        assert page["next_page"] == (page["last_id"] if page["has_more"] else None)
        pages += 1
        if not page["has_more"]:
            break
        cursor = {"after_id": page["last_id"]}
    assert pages == -(-len(runs) // limit)
    # past the oldest run: the documented empty page
    empty = world.api.ok(f"/deployments/{dep}/runs", after_id=runs[-1]["id"])
    assert empty == {
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
        "next_page": None,
    }
    assert world.api.ok(f"/deployments/{dep}/runs", before_id=runs[0]["id"])["data"] == []


@pytest.mark.parametrize("limit", [3, 25])
def test_before_id_pages_backward_to_the_adjacent_newer_items(world: World, limit: int) -> None:
    dep = world.dep_id("dependency-audit")
    runs = world.runs[dep]
    # from the oldest page, walk backward with before_id=first_id up to the newest
    tail = len(runs) % limit or limit
    page = world.api.ok(f"/deployments/{dep}/runs", limit=limit, after_id=runs[-tail - 1]["id"])
    collected = list(page["data"])
    while True:
        back = world.api.ok(f"/deployments/{dep}/runs", limit=limit, before_id=page["first_id"])
        if not back["data"]:
            break
        at = next(i for i, r in enumerate(runs) if r["id"] == page["first_id"])
        assert [r["id"] for r in back["data"]] == [r["id"] for r in runs[max(0, at - limit) : at]]
        assert back["has_more"] is (at - limit > 0), "more newer items beyond this page"
        collected = back["data"] + collected
        page = back
    assert [r["id"] for r in collected] == [r["id"] for r in runs]


@pytest.mark.parametrize(
    "pair", [("after_id", "before_id"), ("after_id", "page"), ("before_id", "page")]
)
@pytest.mark.parametrize("path", ["/deployments/{dep}/runs", "/deployment_runs", "/deployments"])
def test_two_cursors_are_400(world: World, pair: tuple[str, str], path: str) -> None:
    dep = world.dep_id("pr-triage")
    item = world.deployments[1]["id"] if path == "/deployments" else world.runs[dep][5]["id"]
    r = world.api.get(path.format(dep=dep), **{pair[0]: item, pair[1]: item})
    error = assert_error(r, 400, "invalid_request_error")
    assert error.get("param") in pair


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "-3"},
        {"limit": "ten"},
        {"status": "done"},
        {"triggered_after": "yesterday"},
        {"triggered_before": "2026-13-01T00:00:00Z"},
        {"after_id": "drun_" + "0" * 32},
    ],
)
def test_invalid_list_runs_params_are_400(world: World, params: dict[str, str]) -> None:
    dep = world.dep_id("pr-triage")
    error = assert_error(
        world.api.get(f"/deployments/{dep}/runs", **params), 400, "invalid_request_error"
    )
    assert error["param"] == next(iter(params))


def test_cursor_of_another_deployment_is_rejected(world: World) -> None:
    a, b = world.dep_id("pr-triage"), world.dep_id("repo-indexer")
    r = world.api.get(f"/deployments/{a}/runs", after_id=world.runs[b][3]["id"])
    assert_error(r, 400, "invalid_request_error")


@pytest.mark.parametrize("status", STATUSES)
def test_list_runs_status_filter(world: World, status: str) -> None:
    total = 0
    for dep, runs in world.runs.items():
        got = world.api.walk(f"/deployments/{dep}/runs", limit=100, status=status)
        assert [r["id"] for r in got] == [r["id"] for r in runs if r["status"] == status]
        assert len(got) == world.sim.truth_recent(dep, 30 * DAY)[status]
        total += len(got)
    assert total > 0, status


def test_triggered_after_before_window(world: World) -> None:
    dep = world.dep_id("pr-triage")
    runs = world.runs[dep]
    after, before = runs[40]["created_at"], runs[10]["created_at"]
    got = world.api.walk(
        f"/deployments/{dep}/runs", limit=7, triggered_after=after, triggered_before=before
    )
    # as implemented: triggered_after inclusive, triggered_before exclusive
    assert [r["id"] for r in got] == [r["id"] for r in runs[11:41]]
    # the same instants written with an offset and with extra fraction digits
    lo = ts_ns(after)
    shifted = iso(lo + 2 * 3600 * NS)[:-1] + "+02:00"
    again = world.api.walk(
        f"/deployments/{dep}/runs", limit=100, triggered_after=shifted, triggered_before=before
    )
    assert again == got
    # a window in the future is empty
    future = iso(world.now_ns + NS)
    assert world.api.ok(f"/deployments/{dep}/runs", triggered_after=future)["data"] == []


def test_history_older_than_24h(world: World) -> None:
    cutoff = iso(world.now_ns - ns_of(DAY))
    for d in world.deployments:
        old = world.api.ok(f"/deployments/{d['id']}/runs", triggered_before=cutoff, limit=5)
        assert old["data"], d["name"]
        assert all(ts_ns(r["created_at"]) < world.now_ns - ns_of(DAY) for r in old["data"])
    oldest = min(ts_ns(r["created_at"]) for r in world.all_runs)
    assert world.now_ns - oldest > ns_of(2.5 * DAY)


# ---------------------------------------------------------------- limit caps


@pytest.mark.parametrize(
    ("page_cap", "limit", "expected"),
    [
        (100, 100, 100),
        (100, 101, None),
        (100, 1000, None),
        (1000, 101, 101),
        (1000, 1000, 1000),
        (1000, 1001, 1000),
        (1000, 5000, 1000),
    ],
)
@pytest.mark.parametrize("path", ["/deployment_runs", "/deployments/{dep}/runs"])
def test_limit_cap(
    make_sim: Factory, page_cap: int, limit: int, expected: int | None, path: str
) -> None:
    sim, api = make_sim(page_cap=page_cap, deployments=[DeploymentSpec("busy", 120.0)])
    dep = sim.deployment_ids()[0]  # 2160 runs in three days
    r = api.get(path.format(dep=dep), limit=limit)
    if expected is None:
        error = assert_error(r, 400, "invalid_request_error")
        assert error["param"] == "limit"
    else:
        assert r.status_code == 200
        page = r.json()
        assert len(page["data"]) == expected
        assert page["has_more"] is True


def test_page_cap_setting_is_validated(fresh: tuple[Simulator, Api]) -> None:
    sim, _ = fresh
    with pytest.raises(ValueError):
        sim.page_cap = 500
    with pytest.raises(ValueError):
        sim.shape = "g3"


# ---------------------------------------------------------------- all runs


def test_list_all_runs_is_the_union_newest_first(world: World) -> None:
    union = sorted((r for runs in world.runs.values() for r in runs), key=run_key, reverse=True)
    assert [r["id"] for r in world.all_runs] == [r["id"] for r in union]
    assert world.all_runs == union
    paged = world.api.walk("/deployment_runs", cursor="page", limit=33)
    assert paged == world.all_runs


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({"status": "failed"}, lambda r: r["status"] == "failed"),
        ({"status": "running"}, lambda r: r["status"] == "running"),
        ({"status": "skipped"}, lambda r: r["status"] == "skipped"),
        ({"trigger_type": "manual"}, lambda r: r["trigger_context"]["type"] == "manual"),
        ({"trigger_type": "schedule"}, lambda r: r["trigger_context"]["type"] == "schedule"),
        ({"trigger_type": "retry"}, lambda r: False),
        ({"has_error": "true"}, lambda r: r["error"] is not None),
        ({"has_error": "false"}, lambda r: r["error"] is None),
        (
            {"has_error": "true", "trigger_type": "manual"},
            lambda r: r["error"] is not None and r["trigger_context"]["type"] == "manual",
        ),
        (
            {"status": "completed", "trigger_type": "schedule"},
            lambda r: r["status"] == "completed" and r["trigger_context"]["type"] == "schedule",
        ),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_list_all_runs_filters(
    world: World, params: dict[str, str], keep: Callable[[dict[str, Any]], bool]
) -> None:
    got = world.api.walk("/deployment_runs", limit=100, **params)
    expected = [r for r in world.all_runs if keep(r)]
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    if params != {"trigger_type": "retry"}:
        assert got, params


def test_list_all_runs_deployment_filter(world: World) -> None:
    for d in world.deployments:
        got = world.api.walk("/deployment_runs", limit=100, deployment_id=d["id"])
        assert got == world.runs[d["id"]]
    unknown = world.api.ok("/deployment_runs", deployment_id="dep_" + "f" * 32)
    assert unknown["data"] == []
    assert unknown["has_more"] is False


@pytest.mark.parametrize(
    ("op", "keep"),
    [
        ("gt", lambda t, b: t > b),
        ("gte", lambda t, b: t >= b),
        ("lt", lambda t, b: t < b),
        ("lte", lambda t, b: t <= b),
    ],
)
def test_list_all_runs_created_at_bounds(
    world: World, op: str, keep: Callable[[int, int], bool]
) -> None:
    bound = world.all_runs[300]["created_at"]
    got = world.api.walk("/deployment_runs", limit=100, **{f"created_at[{op}]": bound})
    expected = [r for r in world.all_runs if keep(ts_ns(r["created_at"]), ts_ns(bound))]
    assert [r["id"] for r in got] == [r["id"] for r in expected]


@pytest.mark.parametrize(
    "params", [{"trigger_type": "cron"}, {"has_error": "maybe"}, {"created_at[gte]": "today"}]
)
def test_list_all_runs_bad_filters_are_400(world: World, params: dict[str, str]) -> None:
    r = world.api.get("/deployment_runs", **params)
    assert assert_error(r, 400, "invalid_request_error")["param"] == next(iter(params))


# ---------------------------------------------------------------- get run


def test_get_run_both_paths(world: World) -> None:
    picks = [world.all_runs[i] for i in (0, 1, 17, 250, len(world.all_runs) - 1)]
    picks += [next(r for r in world.all_runs if r["status"] == s) for s in STATUSES]
    for run in picks:
        per_dep = world.api.ok(f"/deployments/{run['deployment_id']}/runs/{run['id']}")
        assert per_dep == run
        assert world.api.ok(f"/deployment_runs/{run['id']}") == run
    other = next(d["id"] for d in world.deployments if d["id"] != picks[0]["deployment_id"])
    r = world.api.get(f"/deployments/{other}/runs/{picks[0]['id']}")
    assert_error(r, 404, "not_found_error")


# ---------------------------------------------------------------- run lifecycle


def test_post_run_creates_a_manual_run(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    sim.advance(600.0)
    dep = next(d for d in sim.deployment_ids() if sim.spec(d).name == "pr-triage")
    before = api.ok(f"/deployments/{dep}")["metadata"]["cas_config"]["stats"]["total_runs"]
    r = api.post(f"/deployments/{dep}/run")
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["type"] == "deployment_run"
    assert run["deployment_id"] == dep
    assert run["trigger_context"] == {"type": "manual"}
    assert run["status"] in ("pending", "skipped")
    now = ns_of(sim.clock.now())
    assert ts_ns(run["created_at"]) == now
    assert id_ms(run["id"]) == now // 1_000_000
    assert api.ok(f"/deployments/{dep}/runs", limit=1)["data"] == [run]
    assert api.ok(f"/deployment_runs/{run['id']}") == run
    after = api.ok(f"/deployments/{dep}")["metadata"]["cas_config"]["stats"]
    assert after["total_runs"] == before + 1
    assert after["last_triggered_at"] == run["created_at"][:19] + "Z"
    assert api.ok("/deployment_runs", trigger_type="manual", limit=1)["data"] == [run]


def test_post_run_conflicts_and_missing(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    paused = next(d for d in sim.deployment_ids() if sim.spec(d).name == "weekly-digest")
    count = sim.truth_recent(paused, 30 * DAY)
    assert_error(api.post(f"/deployments/{paused}/run"), 409, "conflict_error")
    assert sim.truth_recent(paused, 30 * DAY) == count
    assert_error(api.post("/deployments/dep_" + "1" * 32 + "/run"), 404, "not_found_error")


@pytest.mark.parametrize(
    ("failure_rate", "outcome"), [(0.0, "completed"), (1.0, "failed")], ids=["ok", "fail"]
)
def test_run_lifecycle_over_time(make_sim: Factory, failure_rate: float, outcome: str) -> None:
    spec = DeploymentSpec(
        "lifecycle",
        None,
        failure_rate=failure_rate,
        pending_s=(5.0, 5.0),
        duration_s=(60.0, 60.0),
        error_types=("agent_archived_error",),
    )
    sim, api = make_sim(deployments=[spec])
    dep = sim.deployment_ids()[0]
    sim.advance(100.0)
    created = api.post(f"/deployments/{dep}/run").json()
    t0 = ts_ns(created["created_at"])
    path = f"/deployment_runs/{created['id']}"
    timeline = [(4.9, "pending"), (0.1, "running"), (59.9, "running"), (0.1, outcome)]
    for step, status in timeline:
        sim.advance(step)
        run = api.ok(path)
        assert run["status"] == status, (step, run)
        if status == "pending":
            assert sim.truth_in_flight(dep) == [run["id"]]
            assert "session_id" not in run
        if status == "running":
            assert ts_ns(run["cas_run_extras"]["started_at"]) == t0 + 5 * NS
            assert "completed_at" not in run
    assert ts_ns(run["completed_at"]) == t0 + 65 * NS
    assert run["duration_ms"] == 60_000
    assert sim.truth_in_flight(dep) == []
    if outcome == "failed":
        assert run["error"]["type"] == "agent_archived_error"
        assert run["agent"]["id"] in run["error"]["message"]
    else:
        assert run["error"] is None
    assert sim.truth_last_finished_status(dep) == outcome


@pytest.mark.system
def test_scheduled_runs_progress_monotonically(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    rank = {"pending": 0, "running": 1, "completed": 2, "failed": 2}
    tracked: dict[str, list[str]] = {}
    for _ in range(300):
        sim.advance(2.0)
        for run in api.ok("/deployment_runs", limit=25)["data"]:
            history = tracked.setdefault(run["id"], [])
            if not history or history[-1] != run["status"]:
                history.append(run["status"])
    transitions = Counter(tuple(h) for h in tracked.values())
    for history in tracked.values():
        if "skipped" in history:
            assert history == ["skipped"]
            continue
        assert [rank[s] for s in history] == sorted(rank[s] for s in history), history
    assert transitions[("pending", "running", "completed")] > 0
    assert any(h[0] == "pending" and h[-1] == "failed" for h in transitions)


def test_skipped_runs_follow_max_concurrent(world: World) -> None:
    skipped = 0
    for d in world.deployments:
        cap = d["metadata"]["cas_config"]["config"]["max_concurrent"]
        runs = world.runs[d["id"]]
        spans = [
            (ts_ns(r["created_at"]), ts_ns(r["completed_at"]) if "completed_at" in r else 1 << 80)
            for r in runs
            if r["status"] != "skipped"
        ]
        for r in runs:
            t = ts_ns(r["created_at"])
            busy = sum(1 for start, end in spans if start < t < end)
            if r["status"] == "skipped":
                skipped += 1
                assert busy >= cap, (d["name"], r["id"])
            else:
                assert busy < cap, (d["name"], r["id"])
    assert skipped > 0


def test_stuck_run_and_days_old_last_success(world: World) -> None:
    stuck = [
        r
        for r in world.all_runs
        if r["status"] == "running"
        and world.now_ns - ts_ns(r["cas_run_extras"]["started_at"]) > ns_of(WORLD_AGE - 600)
    ]
    assert len(stuck) == 1
    dep = stuck[0]["deployment_id"]
    assert world.sim.truth_in_flight(dep) == [stuck[0]["id"]]
    # with max_concurrent 1 every later trigger of that deployment is skipped
    later = [r for r in world.runs[dep] if run_key(r) > run_key(stuck[0])]
    assert later
    assert {r["status"] for r in later} == {"skipped"}

    old = world.dep_id("dependency-audit")
    assert world.by_name["dependency-audit"]["status"] == "active"
    completed = world.api.ok(f"/deployments/{old}/runs", status="completed", limit=100)["data"]
    last_ok = max(ts_ns(r["completed_at"]) for r in completed)
    assert world.now_ns - last_ok > ns_of(2 * DAY)
    assert world.sim.truth_last_success(old) == last_ok / NS
    recent = world.api.walk(
        f"/deployments/{old}/runs", limit=100, triggered_after=iso(world.now_ns - ns_of(DAY))
    )
    assert recent
    assert {r["status"] for r in recent} <= {"failed", "running", "pending"}


# ---------------------------------------------------------------- truth helpers


def test_truth_helpers_agree_with_http(world: World) -> None:
    sim = world.sim
    since = world.now_ns - ns_of(DAY)
    for d in world.deployments:
        dep = d["id"]
        runs = world.runs[dep]
        window = [r for r in runs if ts_ns(r["created_at"]) >= since]
        via_filter = world.api.walk(
            f"/deployments/{dep}/runs", limit=100, triggered_after=iso(since)
        )
        assert via_filter == window
        counts = Counter(r["status"] for r in window)
        assert sim.truth_recent(dep, DAY) == {s: counts.get(s, 0) for s in STATUSES}

        finished = sorted(
            (r for r in runs if r["status"] in TERMINAL and ts_ns(r["completed_at"]) > since),
            key=lambda r: (ts_ns(r["completed_at"]), r["id"]),
        )
        expected = [
            (
                r["status"],
                r["duration_ms"] / 1000.0 if "duration_ms" in r else None,
                r["error"]["type"] if r["error"] else None,
            )
            for r in finished
        ]
        assert sim.truth_finished(dep, since=since / NS) == expected

        completed = [ts_ns(r["completed_at"]) for r in runs if r["status"] == "completed"]
        assert sim.truth_last_success(dep) == (max(completed) / NS if completed else None)
        last = next((r["status"] for r in runs if r["status"] in TERMINAL), None)
        assert sim.truth_last_finished_status(dep) == last
        in_flight = [r["id"] for r in runs if r["status"] in ("pending", "running")]
        assert sim.truth_in_flight(dep) == in_flight[::-1]


def test_truth_finished_until_bound(world: World) -> None:
    dep = world.dep_id("pr-triage")
    since, until = world.now_ns - ns_of(3 * HOUR), world.now_ns - ns_of(HOUR)
    got = world.sim.truth_finished(dep, since=since / NS, until=until / NS)
    expected = [
        r
        for r in world.runs[dep]
        if r["status"] in TERMINAL and since < ts_ns(r["completed_at"]) <= until
    ]
    assert len(got) == len(expected) > 0


# ---------------------------------------------------------------- determinism


@pytest.mark.system
def test_same_seed_same_responses(make_sim: Factory) -> None:
    views = []
    for seed in (11, 11, 12):
        sim, api = make_sim(seed=seed)
        sim.advance(1234.5)
        r = api.post(f"/deployments/{sim.deployment_ids()[-1]}/run")
        assert r.status_code == 200
        posted = r.json()
        sim.advance(77.0)
        views.append(json.dumps(posted) + snapshot(sim, api))
    assert views[0] == views[1]
    assert views[0] != views[2]


def _steps(kind: str, total: float) -> list[float]:
    if kind == "seconds":
        return [1.0] * int(total)
    if kind == "tenths":
        return [0.1] * int(total * 10)
    if kind == "thirds":
        return [1 / 3] * int(total * 3)
    # uneven: irregular pieces that add up to the total exactly
    pieces = [0.7, 13.3, 0.01, 45.99, 1 / 7, 6 / 7, 0.25, 2.75, 6.0]  # sums to 70
    return pieces * int(total // 70)


@pytest.mark.system
@pytest.mark.parametrize("kind", ["seconds", "tenths", "thirds", "uneven"])
def test_stepping_the_clock_in_small_steps_equals_one_jump(make_sim: Factory, kind: str) -> None:
    total = HOUR + 110.0  # a multiple of 70 s
    jump, jump_api = make_sim(seed=5, deployments=4)
    jump.advance(total)
    expected = snapshot(jump, jump_api)

    stepped, api = make_sim(seed=5, deployments=4)
    steps = _steps(kind, total)
    assert sum(steps) == pytest.approx(total)
    every = max(1, len(steps) // 40)
    for i, step in enumerate(steps):
        stepped.advance(step)
        if i % every == 0:
            # reads in between (which settle deployments) must not change the future
            for dep in stepped.deployment_ids():
                api.ok(f"/deployments/{dep}")
                stepped.truth_in_flight(dep)
                stepped.truth_last_success(dep)
            api.ok("/deployment_runs", status="running")
    assert stepped.clock.now() == jump.clock.now()
    assert snapshot(stepped, api) == expected


@pytest.mark.parametrize("seed", range(12))
def test_reads_before_a_post_do_not_change_its_outcome(make_sim: Factory, seed: int) -> None:
    spec = DeploymentSpec(
        "back-to-back", None, failure_rate=0.0, pending_s=(0.0, 0.0), duration_s=(1.2, 1.2)
    )
    results = []
    for observe in (False, True):
        sim, api = make_sim(seed=seed, deployments=[spec])
        dep = sim.deployment_ids()[0]
        sim.advance(100.0)
        api.post(f"/deployments/{dep}/run")
        sim.advance(1.5)  # the first run finished at +1.2 s, between two whole seconds
        if observe:
            api.ok(f"/deployments/{dep}")
        second = api.post(f"/deployments/{dep}/run").json()
        results.append(second)
    assert results[0] == results[1]
    assert results[0]["status"] != "skipped", "the earlier run had finished by the request"


# ---------------------------------------------------------------- G2 shape


def test_g2_record_shape(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    g1 = api.walk("/deployment_runs", limit=100)
    sim.shape = "g2"
    runs = api.walk("/deployment_runs", limit=100)
    assert [r["id"] for r in runs] == [r["id"] for r in g1]
    outcomes: Counter[str] = Counter()
    for r in runs:
        assert set(r) == G2_RUN_KEYS
        assert (r["session_id"] is None) != (r["error"] is None), "exactly one is non-null"
        assert "." not in r["created_at"]
        trigger = r["trigger_context"]
        if trigger["type"] == "schedule":
            scheduled = ts_ns(trigger["scheduled_at"])
            assert "." not in trigger["scheduled_at"]
            assert scheduled <= ts_ns(r["created_at"]) <= scheduled + 3 * NS
        else:
            assert trigger == {"type": "manual"}
        if r["error"] is not None:
            assert set(r["error"]) == {"type", "message"}
            assert r["error"]["type"] in DOC_ERROR_TYPES
            outcomes["error"] += 1
        else:
            assert re.fullmatch(r"sess_[0-9a-f]{32}", r["session_id"])
            outcomes["session"] += 1
    assert outcomes["error"] > 0
    assert outcomes["session"] > 0
    # the status filter does not exist in G2: it is ignored
    dep = sim.deployment_ids()[0]
    assert api.ok(f"/deployments/{dep}/runs", status="running") == api.ok(
        f"/deployments/{dep}/runs"
    )
    with_error = api.walk("/deployment_runs", limit=100, has_error="true")
    assert [r["id"] for r in with_error] == [r["id"] for r in runs if r["error"] is not None]
    without = api.walk("/deployment_runs", limit=100, has_error="false")
    assert [r["id"] for r in without] == [r["id"] for r in runs if r["session_id"] is not None]
    posted = api.post(f"/deployments/{dep}/run").json()
    assert set(posted) == G2_RUN_KEYS
    assert (posted["session_id"] is None) != (posted["error"] is None)
    sim.shape = "g1"
    assert "status" in api.ok(f"/deployment_runs/{posted['id']}")


def test_g2_truth_helpers(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    sim.advance(HOUR)
    sim.shape = "g2"
    now = ns_of(sim.clock.now())
    for dep in sim.deployment_ids():
        runs = api.walk(f"/deployments/{dep}/runs", limit=100)
        window = [r for r in runs if ts_ns(r["created_at"]) >= now - ns_of(DAY)]
        recent = sim.truth_recent(dep, DAY)
        assert recent["completed"] == sum(r["session_id"] is not None for r in window)
        assert recent["failed"] == sum(r["error"] is not None for r in window)
        assert recent["pending"] == recent["running"] == recent["skipped"] == 0
        assert sim.truth_in_flight(dep) == []
        ok = [ts_ns(r["created_at"]) for r in runs if r["session_id"] is not None]
        assert sim.truth_last_success(dep) == (max(ok) / NS if ok else None)
        finished = sim.truth_finished(dep, since=(now - ns_of(DAY)) / NS)
        created = sorted(
            (r for r in runs if now - ns_of(DAY) < ts_ns(r["created_at"])), key=run_key
        )
        assert [(s, e) for s, _, e in finished] == [
            ("failed", r["error"]["type"]) if r["error"] else ("completed", None) for r in created
        ]
        first = runs[0] if runs else None
        expected_last = None
        if first is not None:
            expected_last = "failed" if first["error"] else "completed"
        assert sim.truth_last_finished_status(dep) == expected_last


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "retry_after", "status", "content_type", "header"),
    [
        ("500", None, 500, "application/json", None),
        ("502", None, 502, "text/html", None),
        ("503", None, 503, "text/html", None),
        ("503", "30", 503, "text/html", "30"),
        ("429", None, 429, "text/html", "1"),
        ("429", "7", 429, "text/html", "7"),
        ("429", "Wed, 14 Jun 2026 00:05:00 GMT", 429, "text/html", "http-date"),
    ],
)
def test_http_faults(
    fresh: tuple[Simulator, Api],
    kind: str,
    retry_after: str | None,
    status: int,
    content_type: str,
    header: str | None,
) -> None:
    sim, api = fresh
    sim.faults.inject(kind, count=2, retry_after=retry_after)
    for _ in range(2):
        r = api.get("/deployments")
        assert r.status_code == status
        assert r.headers["Content-Type"] == content_type
        if kind == "500":
            assert_error(r, 500, "api_error")
        if header is None:
            assert "Retry-After" not in r.headers
        elif header == "http-date":
            when = email.utils.parsedate_to_datetime(r.headers["Retry-After"])
            assert when == datetime.datetime(2026, 6, 14, 0, 5, tzinfo=datetime.timezone.utc)
        else:
            assert int(r.headers["Retry-After"]) == int(header)
    assert api.get("/deployments").status_code == 200, "count=2 faults, then healthy"


def test_fault_scoped_to_an_endpoint(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    dep = sim.deployment_ids()[0]
    sim.faults.inject("503", endpoint="list_runs")
    assert api.get("/deployments").status_code == 200
    assert api.get(f"/deployments/{dep}").status_code == 200
    assert api.get(f"/deployments/{dep}/runs").status_code == 503
    assert api.get(f"/deployments/{dep}/runs").status_code == 200


def test_faults_come_before_auth(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    sim.faults.inject("429")
    assert Api(api.base, token="wrong").get("/deployments").status_code == 429


def test_reset_fault_is_a_connection_error(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    assert api.get("/deployments").status_code == 200  # a kept-alive connection exists
    sim.faults.inject("reset", count=2)
    for _ in range(2):
        with pytest.raises(requests.exceptions.ConnectionError):
            api.get("/deployments")
    assert api.get("/deployments").status_code == 200
    sim.faults.down = True
    with pytest.raises(requests.exceptions.ConnectionError):
        api.get("/deployments")
    sim.faults.clear()
    assert api.get("/deployments").status_code == 200


@pytest.mark.parametrize("kind", ["malformed", "truncated"])
def test_unparseable_bodies(fresh: tuple[Simulator, Api], kind: str) -> None:
    sim, api = fresh
    good = api.get("/deployment_runs")
    sim.faults.inject(kind)
    bad = api.get("/deployment_runs")
    assert bad.status_code == 200
    assert len(bad.content) == int(bad.headers["Content-Length"])
    with pytest.raises(ValueError):
        bad.json()
    if kind == "truncated":
        assert bad.content == good.content[: len(good.content) // 2]
    assert api.get("/deployment_runs").json() == good.json()


def test_slow_fault_delays_the_reply(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    sim.faults.inject("slow", retry_after="0.3", endpoint="list_deployments")
    started = time.monotonic()
    body = api.ok("/deployments")
    assert time.monotonic() - started >= 0.3
    assert len(body["data"]) == 6
    sim.faults.inject("slow", retry_after="0.3")
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.request("GET", "/deployments", timeout=0.1)


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("418", {}),
        ("503", {"endpoint": "list_everything"}),
        ("500", {"count": 0}),
        ("slow", {"retry_after": "soon"}),
    ],
)
def test_bad_fault_injection_is_refused(
    fresh: tuple[Simulator, Api], kind: str, kwargs: dict[str, Any]
) -> None:
    sim, api = fresh
    with pytest.raises(ValueError):
        sim.faults.inject(kind, **kwargs)
    assert api.get("/deployments").status_code == 200


def test_token_revoked_after_n_requests_then_rotated(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    sim.faults.revoke_after = 3
    for _ in range(3):
        assert api.get("/deployments").status_code == 200
    assert not sim.faults.revoked
    for _ in range(2):
        assert_error(api.get("/deployments"), 401, "authentication_error")
    assert sim.faults.revoked
    sim.faults.rotate_token("pt-rotated-9")
    assert not sim.faults.revoked
    assert_error(api.get("/deployments"), 401, "authentication_error")
    assert Api(api.base, token="pt-rotated-9").get("/deployments").status_code == 200


def test_deleted_deployment_is_404_everywhere(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    dep = sim.deployment_ids()[1]
    runs = api.walk(f"/deployments/{dep}/runs", limit=100)
    total = len(api.walk("/deployment_runs", limit=100))
    sim.delete_deployment(dep)
    for path in (
        f"/deployments/{dep}",
        f"/deployments/{dep}/runs",
        f"/deployments/{dep}/runs/{runs[0]['id']}",
        f"/deployment_runs/{runs[-1]['id']}",
    ):
        assert_error(api.get(path), 404, "not_found_error")
    assert_error(api.post(f"/deployments/{dep}/run"), 404, "not_found_error")
    assert dep not in {d["id"] for d in api.ok("/deployments")["data"]}
    remaining = api.walk("/deployment_runs", limit=100)
    assert len(remaining) == total - len(runs)
    assert dep not in {r["deployment_id"] for r in remaining}
    assert api.ok("/deployment_runs", deployment_id=dep)["data"] == []


def test_request_counts(fresh: tuple[Simulator, Api]) -> None:
    sim, api = fresh
    dep = sim.deployment_ids()[0]
    run = api.ok(f"/deployments/{dep}/runs", limit=1)["data"][0]["id"]
    assert sim.total_requests() == 1
    sim.reset_counts()
    assert sim.total_requests() == 0
    api.ok("/deployments")
    api.ok("/deployments")
    api.ok(f"/deployments/{dep}")
    for _ in range(3):
        api.ok(f"/deployments/{dep}/runs")
    api.ok("/deployment_runs")
    api.ok(f"/deployments/{dep}/runs/{run}")
    api.ok(f"/deployment_runs/{run}")
    api.post(f"/deployments/{dep}/run")
    api.get("/elsewhere")
    Api(api.base, token=None).get("/deployment_runs")  # 401s count too
    sim.faults.inject("503")
    api.get("/deployment_runs")  # and faulted requests
    api.ok("/sessions")
    api.get("/sessions/sess_missing")
    api.get("/sessions/sess_missing/events")
    assert sim.request_counts == {
        "list_deployments": 2,
        "get_deployment": 1,
        "list_runs": 3,
        "list_all_runs": 3,
        "get_run": 1,
        "get_run_global": 1,
        "create_run": 1,
        "list_sessions": 1,
        "get_session": 1,
        "list_session_events": 1,
        "unknown": 1,
    }
    assert sim.total_requests() == 16
    sim.reset_counts()
    assert set(sim.request_counts.values()) == {0}
    assert sim.total_requests() == 0


# ---------------------------------------------------------------- standalone


@pytest.mark.system
def test_runs_standalone_as_a_module() -> None:
    cmd = [sys.executable, "-m", "qoder_exporter.simulator", "--port", "0", "--seed", "1"]
    cmd += ["--deployments", "3", "--token", "pt-standalone", "--shape", "g2"]
    cmd += ["--page-cap", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        stdout = proc.stdout
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in stdout:
                lines.put(line.strip())

        threading.Thread(target=read, daemon=True).start()
        first = [lines.get(timeout=20) for _ in range(2)]
        assert first[1] == "QODER_PAT=pt-standalone"
        m = re.fullmatch(r"QODER_API_URL=(http://127\.0\.0\.1:(\d+)/api/v1/cloud)", first[0])
        assert m, first
        assert int(m.group(2)) > 0
        api = Api(m.group(1), token="pt-standalone")
        deps = api.ok("/deployments")["data"]
        assert len(deps) == 3
        page = api.ok("/deployment_runs", limit=500)
        assert len(page["data"]) == 500, "--page-cap 1000 caps rather than rejects"
        assert set(page["data"][0]) == G2_RUN_KEYS, "--shape g2"
        # the wall clock drives it: the newest run is from the last few minutes
        newest = ts_ns(page["data"][0]["created_at"]) / NS
        assert time.time() - 3600 < newest <= time.time() + 1
        assert_error(Api(m.group(1), token="x").get("/deployments"), 401, "authentication_error")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
