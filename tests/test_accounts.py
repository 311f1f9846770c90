"""Several accounts in one process: config, the account label, and accounts kept apart.

Two simulators over real HTTP on port 0 sharing one stepped clock: one of them revokes the
token or answers 429, the other's counts stay exact and its polls keep their pace.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from qoder_exporter.accounts import Accounts, account_state_file
from qoder_exporter.cli import reload_config
from qoder_exporter.collector import Exposition
from qoder_exporter.config import Config, ConfigError, config_from_dict
from qoder_exporter.poller import Poller
from qoder_exporter.server import ExporterServer, landing_page
from qoder_exporter.simulator import ManualClock, Simulator
from qoder_exporter.simulator.core import DEFAULT_START

from .conftest import TOKEN, make_config
from .truth import STEP, assert_matches_truth
from .waiting import eventually

# Two simulators and real poll threads per test: the system layer.
pytestmark = pytest.mark.system

TOKEN_B = "pt-test-OTHER-91be02"


@pytest.fixture
def pair() -> Iterator[tuple[Simulator, Simulator]]:
    """Two accounts' APIs, one world clock: both advance together."""
    clock = ManualClock(start=DEFAULT_START)
    a = Simulator(seed=7, deployments=4, token=TOKEN, clock=clock)
    b = Simulator(seed=8, deployments=5, token=TOKEN_B, clock=clock)
    a.serve("127.0.0.1", 0)
    b.serve("127.0.0.1", 0)
    yield a, b
    a.close()
    b.close()


def _account(name: str, sim: Simulator, token: str, **extra: Any) -> dict[str, Any]:
    api = {"url": sim.base_url, "token": token, "requests_per_second": 1000, "timeout": "5s"}
    return {"name": name, "api": api, "deployments": sim.deployment_ids(), **extra}


def _config(a: Simulator, b: Simulator, **top: Any) -> Config:
    doc = {
        "accounts": [_account("intl", a, TOKEN), _account("china", b, TOKEN_B)],
        "poll_interval": "60s",
        "lookback": "24h",
        **top,
    }
    return config_from_dict(doc, env={})


def _accounts(a: Simulator, b: Simulator, **top: Any) -> Accounts:
    accounts = Accounts(_config(a, b, **top), clock=a.clock.now)
    for poller in accounts.pollers.values():
        poller.client.sleep = lambda _s: None
    return accounts


# --- config -------------------------------------------------------------------------------


def _errors(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(doc, env={"QODER_PAT": "pt-env"})
    return caught.value.errors


def test_accounts_are_read_with_their_overrides() -> None:
    config = config_from_dict(
        {
            "accounts": [
                {"name": "intl", "api": {"token": "pt-a"}, "discover": True},
                {
                    "name": "china",
                    "api": {
                        "url": "https://api.qoder.com.cn/api/v1/cloud",
                        "token": "pt-b",
                        "requests_per_second": 5,
                        "workspace_id": "ws_1",
                    },
                    "deployments": ["dep_a1"],
                    "lookback": "2h",
                    "page_size": 50,
                    "concurrency": 2,
                },
            ],
            "lookback": "6h",
            "state_file": "/var/lib/q/state.json",
        },
        env={},
    )
    intl, china = config.accounts
    assert (intl.name, intl.discover, intl.lookback, intl.api.workspace_id) == (
        "intl",
        True,
        6 * 3600,
        None,
    )
    assert china.api.url == "https://api.qoder.com.cn/api/v1/cloud"
    assert (china.api.requests_per_second, china.api.workspace_id) == (5, "ws_1")
    assert (china.lookback, china.page_size, china.concurrency) == (7200, 50, 2)
    assert [d.id for d in china.deployments] == ["dep_a1"]
    assert account_state_file(config.state_file, "china") == "/var/lib/q/state.json.china"


def test_account_errors_name_the_key() -> None:
    errors = _errors(
        {
            "accounts": [
                {"name": "ok", "api": {"token": "pt-a"}, "discover": True},
                {"name": "ok", "api": {"url": "ftp://x", "token": "pt-b"}, "discover": True},
                {"name": "bad name/", "api": {}, "deployments": ["dep_1"], "discover": True},
                {"name": "c", "api": {"token": "pt-c"}, "lookback": "1s"},
            ]
        }
    )
    assert any(e.startswith("accounts[1].api.url: must be an http") for e in errors), errors
    assert "accounts[1].name: duplicate account name 'ok' (already at accounts[0])" in errors
    assert any(e.startswith("accounts[2].name: must be 1-63") for e in errors), errors
    # The process-wide QODER_PAT is not an account's token.
    assert "accounts[2].api.token: no token: set api.token or api.token_file" in errors
    assert any(e.startswith("accounts[2].discover: set either") for e in errors), errors
    assert any(e.startswith("accounts[3].lookback: must be at least poll_interval") for e in errors)
    assert any(e.startswith("accounts[3].discover: set either") for e in errors), errors


def test_accounts_and_a_top_level_api_are_exclusive() -> None:
    errors = _errors(
        {
            "accounts": [{"name": "a", "api": {"token": "pt-a"}, "discover": True}],
            "api": {"token": "pt-x"},
            "discover": True,
        }
    )
    assert errors == [
        "api: set it in each of accounts, not at the top level",
        "discover: set it in each of accounts, not at the top level",
    ]
    assert _errors({"accounts": []}) == [
        "accounts: must be a non-empty list of accounts, got an empty list"
    ]


def test_workspace_id_is_sent_as_a_header(pair: tuple[Simulator, Simulator]) -> None:
    a, _ = pair
    config = make_config(a, api={"workspace_id": "ws_42"})
    poller = Poller(config, clock=a.clock.now)
    assert poller.client.session.headers["qoder-workspace-id"] == "ws_42"
    assert (
        "qoder-workspace-id" not in Poller(make_config(a), clock=a.clock.now).client.session.headers
    )


# --- the account label --------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ", re.MULTILINE)
_PROCESS_WIDE = ("qoder_exporter_build_info", "qoder_exporter_render_failures")


def test_every_per_account_series_has_the_account_label(
    pair: tuple[Simulator, Simulator],
) -> None:
    a, b = pair
    accounts = _accounts(a, b)
    assert accounts.poll_once()
    body = Exposition(accounts.snapshot, a.clock.now).body(openmetrics=False, compress=False)
    text = body.decode()
    samples = _SAMPLE.findall(text)
    assert samples
    for name, labels in samples:
        if name.startswith(_PROCESS_WIDE):
            assert "account=" not in labels, name
        else:
            assert labels.startswith('{account="'), (name, labels)
    assert 'qoder_up{account="intl"} 1.0' in text
    assert 'qoder_up{account="china"} 1.0' in text
    for dep_id in a.deployment_ids():
        assert f'qoder_deployment_sync_success{{account="intl",deployment_id="{dep_id}"}}' in text
    assert (
        'qoder_exporter_api_requests_total{account="china",code="200",endpoint="list_runs"}' in text
    )
    assert 'qoder_deployment_oldest_in_flight_run_age_seconds{account="intl",' in text
    # One HELP/TYPE per family: the accounts' samples are merged into each family.
    assert text.count("# TYPE qoder_up gauge") == 1
    accounts.close()


def test_single_account_output_has_no_account_label(sim: Simulator) -> None:
    poller = Poller(make_config(sim), clock=sim.clock.now)
    assert poller.poll_once()
    text = Exposition(poller.snapshot, sim.clock.now).body(openmetrics=True, compress=False)
    assert b"account=" not in text
    poller.close()


# --- one account's trouble stays its own ----------------------------------------------------


@pytest.mark.parametrize("trouble", ["revoked", "429"])
def test_one_accounts_failure_leaves_the_other_exact(
    pair: tuple[Simulator, Simulator], trouble: str
) -> None:
    a, b = pair
    accounts = _accounts(a, b)
    started = a.clock.now()
    assert accounts.poll_once()
    if trouble == "revoked":
        a.faults.revoke_after = 0
    for step in range(24):
        if trouble == "429":
            a.faults.inject("429", count=1, retry_after="3600")
        a.clock.advance(STEP)
        accounts.poll_once()
        intl, china = accounts.pollers["intl"].snapshot, accounts.pollers["china"].snapshot
        assert not intl.up and china.up, step
    assert_matches_truth(b, accounts.pollers["china"], started)
    merged = accounts.snapshot
    assert not merged.up
    assert merged.last_error is not None and merged.last_error.startswith("intl: ")
    accounts.close()


def test_a_rate_limited_account_does_not_hold_the_others_pace(
    pair: tuple[Simulator, Simulator],
) -> None:
    """Real poll threads: intl is paused for an hour by a 429; china polls every second."""
    a, b = pair
    accounts = _accounts(a, b, poll_interval="1s", lookback="1h")
    stop = threading.Event()
    assert accounts.poll_once()
    a.faults.inject("429", count=1, retry_after="3600")
    a.reset_counts()
    thread = threading.Thread(target=accounts.run, args=(stop,), daemon=True)
    thread.start()
    try:
        intl, china = accounts.pollers["intl"], accounts.pollers["china"]
        eventually(lambda: intl.polls_done() == 2, 30, "intl's cycle that met the 429")
        sent = sum(a.request_counts.values())  # the 429 and the requests already in flight
        before = china.polls_done()
        eventually(
            lambda: china.polls_done() >= before + 3,
            30,
            "china keeps polling while intl is paused",
        )
        assert sum(a.request_counts.values()) == sent  # intl: nothing since, paused
        assert intl.polls_done() == 2
        assert intl.backoff.left() > 0
        assert china.snapshot.up
    finally:
        stop.set()
        accounts.wake()
        thread.join(10)
        accounts.close()


def test_ready_and_landing_page_consider_every_account(
    pair: tuple[Simulator, Simulator],
) -> None:
    a, b = pair
    accounts = _accounts(a, b)
    exposition = Exposition(accounts.snapshot, a.clock.now)
    accounts.on_snapshot = exposition.update
    server = ExporterServer(exposition, ("127.0.0.1", 0), healthy=lambda: True, clock=a.clock.now)
    server.start()
    ready = f"http://127.0.0.1:{server.port}/-/ready"
    try:
        a.faults.revoke_after = 0
        accounts.poll_once()
        assert accounts.pollers["china"].snapshot.up
        assert server.ready() == (False, "no successful poll yet")
        assert requests.get(ready, timeout=10).status_code == 503
        page = landing_page(exposition.snapshot, a.clock.now()).decode()
        assert "Last error: intl: " in page
        a.faults.rotate_token(TOKEN)
        accounts.poll_once()
        assert requests.get(ready, timeout=10).status_code == 200
        assert len(accounts.snapshot.deployments) == len(a.deployment_ids()) + len(
            b.deployment_ids()
        )
    finally:
        server.close()
        accounts.close()


def test_each_account_keeps_its_own_state_file(
    pair: tuple[Simulator, Simulator], tmp_path: Path
) -> None:
    a, b = pair
    state = tmp_path / "state.json"
    accounts = _accounts(a, b, state_file=str(state))
    assert accounts.poll_once()
    accounts.save_state()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json.china", "state.json.intl"]
    accounts.close()


def test_a_reload_that_changes_the_account_names_is_refused(
    pair: tuple[Simulator, Simulator], tmp_path: Path
) -> None:
    a, b = pair
    accounts = _accounts(a, b)
    path = tmp_path / "config.yaml"
    doc = {"accounts": [_account("intl", a, TOKEN), _account("cn", b, TOKEN_B)]}
    path.write_text(yaml.safe_dump(doc))
    ok, message = reload_config(accounts, str(path))
    assert not ok and "the list of account names changed" in message
    assert accounts.reload.ok is False
    doc["accounts"][1]["name"] = "china"
    doc["accounts"][1]["lookback"] = "2h"
    path.write_text(yaml.safe_dump(doc))
    assert reload_config(accounts, str(path))[0]
    assert accounts.poll_once()
    assert accounts.pollers["china"].config.lookback == 7200
    path.write_text(yaml.safe_dump({"api": doc["accounts"][0]["api"], "discover": True}))
    ok, message = reload_config(accounts, str(path))
    assert not ok and "needs a restart" in message
    accounts.close()
