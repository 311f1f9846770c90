"""The per-deployment families of the exposition, rendered as cached fragments.

A body at 10,000 deployments is tens of MB; rendering all of it after every poll would cost
seconds of CPU while most deployments did not change. So each deployment's sample lines are
rendered once per family (a *fragment*), kept while its view renders the same, and a body is
assembled family by family from them: a quiet poll re-renders only what changed.

The sample lines are written here directly, not through prometheus_client (whose sample
objects cost ~10x more); they are byte for byte what prometheus_client writes for the
families of collector.families(), which tests/test_collector.py checks. The HELP and TYPE
lines come from prometheus_client itself (see headers()). Sample lines are the same in the
text format and in OpenMetrics (no timestamps, no exemplars): only the headers differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from operator import attrgetter

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.utils import floatToGoString

from .filters import DEFAULT_METRICS, MetricsConfig
from .models import RUN_ERROR_TYPES, STATUSES, TERMINAL, TRIGGERS
from .snapshot import DeploymentView, HistogramData
from .sync import QUEUE_BUCKETS, SESSION_TOKEN_BUCKETS

_TERMINAL = tuple(s for s in STATUSES if s in TERMINAL)
_OBSERVED = ("completed", "failed")  # statuses whose runs carry a duration
_OM_EOF = b"# EOF\n"

Labels = tuple[tuple[str, str], ...]  # (name, escaped value) pairs


def escape(value: str) -> str:
    """A label value as both formats write it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt(value: float) -> str:
    """A sample value as prometheus_client writes it (Go's float formatting)."""
    if type(value) is int and -1_000_000 < value < 1_000_000:
        return f"{value}.0"  # what floatToGoString(float(n)) gives, at a fraction of the cost
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def line(name: str, labels: Labels, value: float) -> str:
    # prometheus_client sorts the labels of every sample by name.
    if len(labels) == 1:
        inner = f'{labels[0][0]}="{labels[0][1]}"'
    else:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels))
    return f"{name}{{{inner}}} {fmt(value)}\n" if inner else f"{name} {fmt(value)}\n"


_LES: dict[tuple[float, ...], list[str]] = {}


def _les(bounds: tuple[float, ...]) -> list[str]:
    les = _LES.get(bounds)
    if les is None:
        if len(_LES) > 16:
            _LES.clear()
        les = _LES[bounds] = [fmt(b) for b in bounds] + ["+Inf"]
    return les


@dataclass(frozen=True, slots=True)
class Dep:
    """A deployment's own labels: as pairs, and joined as they begin every sample's labels.

    Every per-deployment family's other labels sort after deployment_id (and account before
    it), except qoder_deployment_info's agent_*: so most lines are `name{<text>,rest} value`
    and a family's lines can be written from one template (see _Template).
    """

    labels: Labels
    text: str

    @classmethod
    def of(cls, deployment_id: str, account: str | None = None) -> Dep:
        labels: Labels = (("deployment_id", escape(deployment_id)),)
        if account is not None:
            labels = (("account", escape(account)), *labels)
        return cls(labels, ",".join(f'{k}="{v}"' for k, v in labels))


class _Template:
    """Lines `name{<deployment's labels>,<rest>} <value>` written by one str.format call,
    a tenth of the cost of writing each line: the render after a busy poll at 10,000
    deployments is mostly this (bench/RESULTS.md, Scale). `rest` comes sorted.

    The first `counts` lines take counts: when all are ints below a million (nearly
    always), they are written as Go writes float(n), `n.0`, by the format call itself."""

    def __init__(self, lines: Sequence[tuple[str, Labels]], counts: int | None = None) -> None:
        counts = len(lines) if counts is None else counts
        generic, ints = [], []
        for i, (name, rest) in enumerate(lines, 1):
            tail = _brace("".join(f',{k}="{v}"' for k, v in rest))
            head = f"{name}{{{{{{0}}{tail}}}}} {{{i}}}"
            generic.append(f"{head}\n")
            ints.append(f"{head}.0\n" if i <= counts else f"{head}\n")
        self._format = "".join(generic).format
        self._ints = "".join(ints).format

    def __call__(self, dep: Dep, counts: Sequence[float], values: Sequence[float] = ()) -> str:
        if counts and _small_ints(counts):
            return self._ints(dep.text, *counts, *map(fmt, values))
        return self._format(dep.text, *map(fmt, counts), *map(fmt, values))


_INT = {int}


def _small_ints(values: Sequence[float]) -> bool:
    # int, not bool or float: str(n) + ".0" is then what floatToGoString(float(n)) gives.
    return set(map(type, values)) == _INT and min(values) > -1_000_000 and max(values) < 1_000_000


def _brace(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


_HISTOGRAMS: dict[tuple[str, tuple[float, ...], Labels], _Template] = {}


def _histogram_template(name: str, bounds: tuple[float, ...], rest: Labels) -> _Template:
    """_bucket lines, then _count and _sum, as HistogramMetricFamily.add_metric adds them
    (le sorts between deployment_id and status, the only other label of these histograms)."""
    key = (name, bounds, rest)
    template = _HISTOGRAMS.get(key)
    if template is None:
        if len(_HISTOGRAMS) > 64:
            _HISTOGRAMS.clear()
        les = _les(bounds)
        lines = [(f"{name}_bucket", (("le", le), *rest)) for le in les]
        if float(les[0]) >= 0:
            lines += [(f"{name}_count", rest), (f"{name}_sum", rest)]
        template = _HISTOGRAMS[key] = _Template(lines, len(lines) - (len(lines) > len(les)))
    return template


def _histogram(
    name: str, dep: Dep, rest: Labels, bounds: tuple[float, ...], data: HistogramData | None
) -> str:
    cumulative = data.cumulative if data else (0,) * (len(bounds) + 1)
    template = _histogram_template(name, bounds, rest)
    if float(_les(bounds)[0]) >= 0:
        return template(dep, (*cumulative, cumulative[-1]), (data.total if data else 0.0,))
    return template(dep, cumulative)


def _simple(name: str, dep: Dep, value: float) -> str:
    return f"{name}{{{dep.text}}} {fmt(value)}\n"


def _labelled(name: str, dep: Dep, label: str, value: str, n: float) -> str:
    """One line with one label after the deployment's; `value` comes escaped."""
    return f'{name}{{{dep.text},{label}="{value}"}} {fmt(n)}\n'


@dataclass(frozen=True, slots=True)
class Family:
    """One per-deployment metric family: its header and how one deployment's lines read."""

    name: str
    kind: str  # gauge, counter or histogram (prometheus_client's type names)
    doc: str
    render: Callable[[DeploymentView, Dep, tuple[float, ...]], str]
    # The DeploymentView fields render reads (besides id): a changed deployment's family
    # whose inputs are equal keeps its lines (tests/test_collector.py changes each field).
    inputs: tuple[str, ...] = ()


def _info(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
    meta = d.info
    status = "unknown"
    if meta is not None:
        # The API keeps status "active" on an archived deployment: say what it is.
        status = "archived" if meta.archived else meta.status
    labels = (
        ("name", escape(meta.name if meta else d.id)),
        ("status", escape(status)),
        ("agent_id", escape(meta.agent_id if meta else "")),
        ("schedule", escape(meta.schedule if meta else "")),
        ("agent_version", escape(meta.agent_version if meta else "")),
    )
    return line("qoder_deployment_info", (*dep.labels, *labels), 1.0)


_RECENT = _Template([("qoder_deployment_recent_runs", (("status", s),)) for s in STATUSES])


def _recent(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
    recent = d.recent
    return _RECENT(dep, [recent.get(s, 0) for s in STATUSES])


_RUNS_KEYS = tuple((s, t) for s in _TERMINAL for t in TRIGGERS)
_RUNS = _Template(
    [("qoder_deployment_runs_total", (("status", s), ("trigger", t))) for s, t in _RUNS_KEYS]
)


def _runs(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
    by_trigger = d.by_trigger or {(s, "other"): n for s, n in d.totals.items()}
    return _RUNS(dep, [by_trigger.get(k, 0) for k in _RUNS_KEYS])


def _duration_statuses(d: DeploymentView) -> list[str]:
    if d.durations.keys() <= set(_OBSERVED):
        return list(_OBSERVED)  # the usual case, already sorted
    return sorted(set(_OBSERVED) | set(d.durations))


def _durations(d: DeploymentView, dep: Dep, bounds: tuple[float, ...], drop: str = "") -> str:
    return "".join(
        _histogram(
            "qoder_deployment_run_duration_seconds",
            dep,
            (("status", escape(s)),),
            bounds,
            d.durations.get(s),
        )
        for s in _duration_statuses(d)
        if s != drop
    )


def _optional(name: str, value: Callable[[DeploymentView], float | None]) -> Callable[..., str]:
    def render(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
        v = value(d)
        return "" if v is None else _simple(name, dep, v)

    return render


_LAST_STATUS = _Template(
    [("qoder_deployment_last_run_status", (("status", s),)) for s in _TERMINAL]
)


def _last_status(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
    last = d.last_finished_status
    if last is None:
        return ""
    return _LAST_STATUS(dep, [int(s == last) for s in _TERMINAL])


_ERRORS = _Template(
    [("qoder_deployment_run_errors_total", (("error_type", t),)) for t in RUN_ERROR_TYPES]
)


def _errors(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
    by_type = dict.fromkeys(RUN_ERROR_TYPES, 0)
    for error_type, count in d.errors.items():
        by_type[error_type if error_type in by_type else "other"] += count
    return _ERRORS(dep, list(by_type.values()))


def _paused(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
    if d.info is None:
        return ""
    reason = d.info.paused_reason or ("manual" if d.info.status == "paused" else "none")
    value = 1.0 if d.info.status == "paused" else 0.0
    return _labelled("qoder_deployment_paused", dep, "reason", escape(reason), value)


def _failed_dropped(d: DeploymentView, dep: Dep, bounds: tuple[float, ...]) -> str:
    # metrics.failed_duration_histogram: false: the completed (and any other) series only.
    return _durations(d, dep, bounds, drop="failed")


def _reasons(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
    name = "qoder_deployment_run_failure_reasons_total"
    return "".join(
        _labelled(name, dep, "reason", escape(r), n) for r, n in sorted(d.reasons.items())
    )


def _tokens(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
    name = "qoder_deployment_run_tokens_total"
    return "".join(_labelled(name, dep, "kind", escape(k), n) for k, n in sorted(d.tokens.items()))


def _session_tokens(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
    if d.session_tokens is None:
        return ""  # absent until a run's session gives tokens
    name = "qoder_deployment_run_session_tokens"
    return _histogram(name, dep, (), SESSION_TOKEN_BUCKETS, d.session_tokens)


def _queue(d: DeploymentView, dep: Dep, _: tuple[float, ...]) -> str:
    return _histogram("qoder_deployment_run_queue_seconds", dep, (), QUEUE_BUCKETS, d.queue)


def _info_value(name: str, value: Callable[[DeploymentView], float | None]) -> Callable[..., str]:
    """A gauge of the deployment's metadata: absent while the metadata is unknown."""
    return _optional(name, lambda d: None if d.info is None else value(d))


def _always(name: str, value: Callable[[DeploymentView], float]) -> Callable[..., str]:
    return _optional(name, value)


# In the order of collector._deployment_families; qoder_deployment_watched_missing follows
# them (it also lists the configured deployments that are missing; see collector.py).
FAMILIES: tuple[Family, ...] = (
    Family(
        "qoder_deployment_info",
        "gauge",
        "Watched deployment, value 1; join on deployment_id for its name.",
        _info,
        ("info",),
    ),
    Family(
        "qoder_deployment_recent_runs",
        "gauge",
        "Runs triggered within the lookback window, by current status.",
        _recent,
        ("recent",),
    ),
    Family(
        "qoder_deployment_runs",
        "counter",
        "Runs that reached a terminal status while the exporter watched, each counted once, "
        "by trigger_context.type (schedule, manual, retry, other).",
        _runs,
        (
            "by_trigger",
            "totals",
        ),
    ),
    Family(
        "qoder_deployment_run_duration_seconds",
        "histogram",
        "Duration of finished runs (duration_ms), each observed once.",
        _durations,
        ("durations",),
    ),
    Family(
        "qoder_deployment_last_success_timestamp_seconds",
        "gauge",
        "completed_at of the newest completed run, even if older than the lookback window.",
        _optional("qoder_deployment_last_success_timestamp_seconds", lambda d: d.last_success),
        ("last_success",),
    ),
    Family(
        "qoder_deployment_last_run_status",
        "gauge",
        "1 for the status of the newest finished run, 0 for the others.",
        _last_status,
        ("last_finished_status",),
    ),
    Family(
        "qoder_deployment_run_errors",
        "counter",
        "Failed runs by error.type (the documented types; any other is other).",
        _errors,
        ("errors",),
    ),
    Family(
        "qoder_deployment_paused",
        "gauge",
        "1 when the deployment is paused; reason is manual, error (auto-paused) or none.",
        _paused,
        ("info",),
    ),
    Family(
        "qoder_deployment_run_retried_failures",
        "counter",
        "Failed runs the API retries (cas_run_extras.attempt <= max_retries); "
        "final failures are runs_total{status=failed} minus these.",
        _always("qoder_deployment_run_retried_failures_total", lambda d: d.retried_failures),
        ("retried_failures",),
    ),
    Family(
        "qoder_deployment_consecutive_failures",
        "gauge",
        "Final failed runs in a row (creation order) since the last completed run, "
        "counted by the exporter; skipped runs leave it unchanged.",
        _always("qoder_deployment_consecutive_failures", lambda d: d.consecutive_failures),
        ("consecutive_failures",),
    ),
    Family(
        "qoder_deployment_api_consecutive_failures",
        "gauge",
        "Consecutive failed runs as counted by the Qoder API (metadata.cas_config.stats).",
        _info_value(
            "qoder_deployment_api_consecutive_failures",
            lambda d: (
                None
                if d.info is None or d.info.consecutive_failures is None
                # A count, written as prometheus_client writes float(count).
                else float(d.info.consecutive_failures)
            ),
        ),
        ("info",),
    ),
    Family(
        "qoder_deployment_last_run_timestamp_seconds",
        "gauge",
        "created_at of the newest run seen, any status.",
        _optional("qoder_deployment_last_run_timestamp_seconds", lambda d: d.last_run),
        ("last_run",),
    ),
    Family(
        "qoder_deployment_last_failure_timestamp_seconds",
        "gauge",
        "completed_at (else created_at) of the newest failed run.",
        _optional("qoder_deployment_last_failure_timestamp_seconds", lambda d: d.last_failure),
        ("last_failure",),
    ),
    Family(
        "qoder_deployment_next_trigger_timestamp_seconds",
        "gauge",
        "Next trigger time announced by the API (schedule.upcoming_runs_at, else "
        "metadata.cas_config.stats.next_trigger_at).",
        _info_value(
            "qoder_deployment_next_trigger_timestamp_seconds",
            lambda d: d.info.next_trigger if d.info is not None else None,
        ),
        ("info",),
    ),
    Family(
        "qoder_deployment_expected_run_timestamp_seconds",
        "gauge",
        "Earliest announced trigger time not yet followed by a run: in the future while "
        "on time, stuck at the missed slot when the schedule stops firing. Absent for "
        "manual, paused and archived deployments.",
        _optional("qoder_deployment_expected_run_timestamp_seconds", lambda d: d.expected_run),
        ("expected_run",),
    ),
    Family(
        "qoder_deployment_archived",
        "gauge",
        "1 when the deployment is archived (archived_at set).",
        _info_value(
            "qoder_deployment_archived",
            lambda d: 1.0 if d.info is not None and d.info.archived else 0.0,
        ),
        ("info",),
    ),
    Family(
        "qoder_deployment_run_queue_seconds",
        "histogram",
        "Queue time of finished runs (cas_run_extras.started_at - triggered_at), "
        "each observed once, where the API gives both.",
        _queue,
        ("queue",),
    ),
    Family(
        "qoder_deployment_run_failure_reasons",
        "counter",
        "Failed runs whose session told why (reason: retries_exhausted, budget_reached, "
        "blocked, terminated, cancelled, session_error, unknown); failures of runs that "
        "could not start are in run_errors_total by error_type.",
        _reasons,
        ("reasons",),
    ),
    Family(
        "qoder_deployment_run_tokens",
        "counter",
        "Tokens of finished runs' sessions (final usage), added once per run, by kind; "
        "only the kinds the API reports.",
        _tokens,
        ("tokens",),
    ),
    Family(
        "qoder_deployment_run_session_tokens",
        "histogram",
        "Tokens per finished run (the sum of the kinds its session's final usage gives), "
        "each run observed once; absent until a run's session gives tokens.",
        _session_tokens,
        ("session_tokens",),
    ),
    Family(
        "qoder_deployment_run_credits",
        "counter",
        "Credits (usage.total_credits) of finished runs' sessions, added once per run.",
        _optional("qoder_deployment_run_credits_total", lambda d: d.credits),
        ("credits",),
    ),
    Family(
        "qoder_deployment_run_list_cost_usd",
        "counter",
        "List price in USD (usage.list_cost) of finished runs' sessions, added once per run.",
        _optional("qoder_deployment_run_list_cost_usd_total", lambda d: d.list_cost_usd),
        ("list_cost_usd",),
    ),
    Family(
        "qoder_deployment_sync_success",
        "gauge",
        "1 when the last poll of this deployment's runs succeeded.",
        _always("qoder_deployment_sync_success", lambda d: 1.0 if d.sync_ok else 0.0),
        ("sync_ok",),
    ),
)

MISSING = Family(
    "qoder_deployment_watched_missing",
    "gauge",
    "1 for a configured deployment that the API answers 404 for (deleted, or another "
    "account's); 0 for every other watched deployment.",
    _always("qoder_deployment_watched_missing", lambda d: 0.0),
)


def families_for(metrics: MetricsConfig = DEFAULT_METRICS) -> tuple[Family, ...]:
    """The per-deployment families the metrics: section publishes, in exposition order
    (watched_missing last, if kept), as collector.families() filters them."""
    keeps = metrics.filter.keeps
    out = []
    for family in (*FAMILIES, MISSING):
        if not keeps(family.name, family.kind):
            continue
        if family.render is _durations and not metrics.failed_duration_histogram:
            family = replace(family, render=_failed_dropped)
        out.append(family)
    return tuple(out)


# Fields of a DeploymentView that the exposition does not show (the landing page does):
# a view differing only in these renders the same fragments.
_NOT_RENDERED = frozenset({"last_error", "oldest_in_flight"})
_RENDERED = tuple(f.name for f in fields(DeploymentView) if f.name not in _NOT_RENDERED)
_rendered_fields = attrgetter(*_RENDERED)


def renders_same(a: DeploymentView, b: DeploymentView) -> bool:
    """True when both views give the same sample lines (the builder shares unchanged parts,
    so most comparisons are identity checks, which tuple comparison does first)."""
    return a is b or bool(_rendered_fields(a) == _rendered_fields(b))


class _Empty:
    """A family with no samples: prometheus_client still writes its HELP and TYPE lines."""

    def __init__(self, families: Sequence[Family]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return (Metric(f.name, f.doc, f.kind) for f in self.families)


def headers(families: Sequence[Family]) -> tuple[list[bytes], list[bytes]]:
    """Each family's HELP and TYPE lines in the text format and in OpenMetrics."""
    text, om = [], []
    for family in families:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Empty([family]))
        text.append(text_format.generate_latest(registry))
        om_body: bytes = om_format.generate_latest(registry)  # type: ignore[no-untyped-call]
        om.append(om_body.removesuffix(_OM_EOF))
    return text, om


def _getter(names: tuple[str, ...]) -> Callable[[DeploymentView], object]:
    return attrgetter(*names) if names else _nothing


def _nothing(_: DeploymentView) -> None:
    return None


# One account's views: its name (the `account` label; None without accounts) and views.
Group = tuple[str | None, Sequence[DeploymentView]]


class FragmentCache:
    """Each deployment's fragments (its lines of each family, UTF-8), kept while its view
    renders the same; `rendered` counts the deployments rendered (tests count calls)."""

    def __init__(self, families: Sequence[Family] | None = None) -> None:
        self.families = families_for() if families is None else tuple(families)
        self._inputs = [_getter(f.inputs) for f in self.families]
        self.rendered = 0
        # (account, deployment id) -> (view, bounds, fragments)
        self._cache: dict[
            tuple[str | None, str], tuple[DeploymentView, tuple[float, ...], tuple[bytes, ...]]
        ] = {}
        self._keys: list[tuple[str | None, str]] = []

    def fragments(
        self, groups: Sequence[Group], bounds: tuple[float, ...]
    ) -> tuple[list[tuple[bytes, ...]], dict[int, list[int]] | None]:
        """The fragments of these views (UTF-8: a body is bytes), in order, and per family
        whose lines changed since the last call the positions of the deployments whose
        lines did (None: all may have, the deployments differ). Forgets deployments no
        longer listed."""
        old, new = self._cache, {}
        out: list[tuple[bytes, ...]] = []
        dirty: dict[int, list[int]] | None = {}
        keys = [(account, v.id) for account, views in groups for v in views]
        if keys != self._keys:
            dirty = None
        for account, views in groups:
            for view in views:
                key = (account, view.id)
                hit = old.get(key)
                if hit is None or hit[1] != bounds:
                    frags = self._render(account, view, bounds)
                    dirty = None  # a new deployment, or new buckets: every family
                elif renders_same(hit[0], view):
                    frags = hit[2]
                else:
                    frags = self._rerender(account, hit[0], hit[2], view, bounds)
                    if dirty is not None:
                        at = len(out)
                        for i, f in enumerate(frags):
                            if f is not hit[2][i]:
                                dirty.setdefault(i, []).append(at)
                new[key] = (view, bounds, frags)
                out.append(frags)
        self._cache, self._keys = new, keys
        return out, dirty

    def _rerender(
        self,
        account: str | None,
        old: DeploymentView,
        frags: tuple[bytes, ...],
        view: DeploymentView,
        bounds: tuple[float, ...],
    ) -> tuple[bytes, ...]:
        """A changed deployment: only the families whose inputs changed are written again
        (a finished run changes about a third of them)."""
        self.rendered += 1
        dep = Dep.of(view.id, account)
        return tuple(
            frag if inputs(old) == inputs(view) else f.render(view, dep, bounds).encode()
            for f, inputs, frag in zip(self.families, self._inputs, frags, strict=True)
        )

    def _render(
        self, account: str | None, view: DeploymentView, bounds: tuple[float, ...]
    ) -> tuple[bytes, ...]:
        self.rendered += 1
        dep = Dep.of(view.id, account)
        return tuple(f.render(view, dep, bounds).encode() for f in self.families)
