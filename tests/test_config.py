"""Config loading: one fixture per rule, exact error texts, and the token never shown."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoder_exporter.client import QoderClient
from qoder_exporter.config import (
    _API_KEYS,
    _TOP_KEYS,
    DEFAULT_API_URL,
    DEFAULT_DURATION_BUCKETS,
    ApiConfig,
    Config,
    ConfigError,
    DeploymentConfig,
    Secret,
    config_from_dict,
    format_duration,
    load_config,
    parse_duration,
)

TOKEN = "pt-SECRET-abc123"
ENV = {"QODER_PAT": TOKEN}
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "testdata" / "config"
GOOD = sorted((DATA / "good").glob("*.yaml"))
BAD = sorted((DATA / "bad").glob("*.yaml"))
DEP_A = "dep_019ec556114c78f8b60ee34fcb98bf59"
DEP_B = "dep_019ec55a2b687b3f94eee77dd77e4b2a"


def errors_of(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, ENV if env is None else env)
    return caught.value.errors


def fixture_env(yaml_path: Path) -> dict[str, str]:
    """The environment for a fixture: ENV unless a <name>.env file replaces it."""
    env_path = yaml_path.with_suffix(".env")
    if not env_path.exists():
        return dict(ENV)
    lines = env_path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line)


# Fixtures


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_fixture_reports_exactly_the_expected_errors(path: Path) -> None:
    expected = path.with_suffix(".err").read_text().replace("<DIR>", str(path.parent))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), fixture_env(path))
    assert str(caught.value) + "\n" == expected
    assert TOKEN not in str(caught.value)


def test_every_bad_fixture_has_its_expected_errors() -> None:
    assert len(BAD) >= 16
    assert not [p.name for p in BAD if not p.with_suffix(".err").exists()]


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_fixture_loads(path: Path) -> None:
    config = load_config(str(path), fixture_env(path))
    assert config.api.token
    assert TOKEN not in repr(config)


def test_minimal_discover_uses_every_default_and_the_env_token() -> None:
    config = load_config(str(DATA / "good" / "minimal_discover.yaml"), ENV)
    assert config == Config(api=ApiConfig(token=Secret(TOKEN)), discover=True)
    assert config.api.url == DEFAULT_API_URL
    assert config.api.token.reveal() == TOKEN
    assert config.poll_interval == 60.0
    assert config.lookback == 86400.0
    assert config.page_size == 100
    assert config.concurrency == 8
    assert config.duration_buckets == DEFAULT_DURATION_BUCKETS


def test_full_fixture_sets_every_key() -> None:
    config = load_config(str(DATA / "good" / "full.yaml"), ENV)
    assert config == Config(
        api=ApiConfig(
            url="https://api.qoder.com.cn/api/v1/cloud",
            token=Secret(TOKEN),
            timeout=30.0,
            max_retries=0,
            requests_per_second=2.5,
            max_response_bytes=512 * 1024,
            deadline=120.0,
            max_pages=50,
            max_clock_skew=30.0,
            insecure=True,
        ),
        deployments=(
            DeploymentConfig(DEP_A),
            DeploymentConfig(DEP_B, lookback=7 * 86400.0),
            DeploymentConfig("dep_00ff"),
        ),
        poll_interval=90.0,
        lookback=48 * 3600.0,
        page_size=1000,
        page_size_set=True,
        concurrency=64,
        duration_buckets=(0.5, 1.0, 2.5, 3600.0),
    )


def test_token_file_is_read_relative_to_the_config_and_stripped() -> None:
    config = load_config(str(DATA / "good" / "token_file.yaml"), {})
    assert config.api.token.reveal() == "pt-FILE-token-9d8e7f"
    assert config.api.token_file == str(DATA / "good" / "pat.txt")


def test_token_file_wins_over_qoder_pat() -> None:
    config = load_config(str(DATA / "good" / "token_file.yaml"), ENV)
    assert config.api.token.reveal() == "pt-FILE-token-9d8e7f"


def test_token_file_relative_to_base_dir_in_config_from_dict() -> None:
    doc = {"api": {"token_file": "pat.txt"}, "discover": True}
    config = config_from_dict(doc, {}, base_dir=str(DATA / "good"))
    assert config.api.token.reveal() == "pt-FILE-token-9d8e7f"


def test_env_expansion_fixture() -> None:
    path = DATA / "good" / "env_expansion.yaml"
    config = load_config(str(path), fixture_env(path))
    assert config.api.url == "http://localhost:8080/api/v1/cloud"
    assert config.api.timeout == 45.0
    assert config.api.max_retries == 5
    assert config.api.requests_per_second == 7.5
    assert config.deployments == (DeploymentConfig("dep_ab12"),)
    assert config.discover is False


def test_durations_as_bare_numbers_are_seconds() -> None:
    config = load_config(str(DATA / "good" / "durations_as_numbers.yaml"), ENV)
    assert (config.api.timeout, config.poll_interval, config.lookback) == (2.5, 15.0, 3600.0)


def test_example_config_loads_when_qoder_pat_is_set() -> None:
    config = load_config(str(ROOT / "config.example.yaml"), ENV)
    assert config.api.token.reveal() == TOKEN
    assert config.api.url == DEFAULT_API_URL
    assert config.deployments == (DeploymentConfig(DEP_A), DeploymentConfig(DEP_B, 7 * 86400.0))
    assert config.duration_buckets == DEFAULT_DURATION_BUCKETS


def test_example_config_mentions_every_key_and_the_china_region() -> None:
    text = (ROOT / "config.example.yaml").read_text()
    for key in (*_TOP_KEYS, *_API_KEYS):
        assert re.search(rf"^\s*(# )?(- )?{key}:", text, re.MULTILINE), key
    assert "https://api.qoder.com.cn/api/v1/cloud" in text
    assert "${QODER_PAT}" in text


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), ENV)
    assert caught.value.errors == [f"{path}: cannot read the file: No such file or directory"]


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"discover: true\n# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), ENV)
    assert caught.value.errors == [f"{path}: not UTF-8 text (bad byte at offset 20)"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[" * 5000 + "]" * 5000, "invalid YAML: nested too deeply"),
        (
            "page_size: 1" + "0" * 5000,
            "invalid YAML value: Exceeds the limit (4300 digits) for integer string conversion: "
            "value has 5001 digits",
        ),
        ("lookback: 2024-13-45", "invalid YAML value: month must be in 1..12"),
        (
            "? [a, b]\n: 1",
            "1:3: invalid YAML: found unhashable key (while constructing a mapping "
            "at line 1, column 1)",
        ),
    ],
)
def test_yaml_values_python_cannot_build_are_config_errors(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), ENV)
    separator = "" if error[0].isdigit() else " "
    assert caught.value.errors == [f"{path}:{separator}{error}"]


def test_yaml_error_does_not_quote_the_offending_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f'api:\n  token: "{TOKEN}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert str(caught.value).startswith(f"invalid configuration:\n  - {path}:")
    assert TOKEN not in str(caught.value)


def test_yaml_merge_keys_may_repeat_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("x: &base\n  timeout: 5s\napi:\n  <<: *base\n  timeout: 7s\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), ENV)
    # Only the anchor's home is wrong; the merged-then-overridden timeout is fine.
    assert caught.value.errors[0].startswith("x: unknown key")
    assert len(caught.value.errors) == 2


def test_config_error_text_lists_every_error() -> None:
    err = ConfigError(["a: one", "b.c: two"])
    assert str(err) == "invalid configuration:\n  - a: one\n  - b.c: two"
    assert err.errors == ["a: one", "b.c: two"]


# Durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("500ms", 0.5),
        ("1s500ms", 1.5),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1y", 365 * 86400.0),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        ("0", 0.0),
        ("90", 90.0),
        ("2.5", 2.5),
        (" 10s ", 10.0),
        (45, 45.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("-5s", "must not be negative"),
        (-1, "must not be negative"),
        (float("nan"), "must be a number"),
        (float("inf"), "too large"),
        (10**400, "too large"),
        ("abc", "invalid duration 'abc'"),
        ("5x", "unknown unit 'x'"),
        ("5min", "unknown unit 'min'"),
        ("30m1h", "largest to smallest"),
        ("1h1h", "largest to smallest"),
        ("1h30", "invalid duration"),
        ("h", "invalid duration"),
        (".5s", "invalid duration"),
        ("1e3s", "unknown unit 'e'"),
        ("+5s", "invalid duration"),
        ("٣s", "invalid duration"),
        (True, "must be a string like '30s' or a number"),
    ],
)
def test_parse_duration_rejects(text: str | int | float, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (1, "1s"),
        (90, "1m30s"),
        (86400, "1d"),
        (90061.5, "1d1h1m1s500ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ${VAR} expansion


def test_expansion_of_a_set_variable() -> None:
    config = config_from_dict({"deployments": ["dep_${ID}"]}, dict(ENV, ID="abc"))
    assert config.deployments == (DeploymentConfig("dep_abc"),)


def test_expansion_default_used_when_unset_or_empty() -> None:
    doc = {"api": {"url": "${URL:-http://localhost:1}"}, "discover": True}
    assert config_from_dict(doc, ENV).api.url == "http://localhost:1"
    assert config_from_dict(doc, dict(ENV, URL="")).api.url == "http://localhost:1"
    assert config_from_dict(doc, dict(ENV, URL="https://h:2")).api.url == "https://h:2"


def test_expansion_of_an_empty_variable_without_default_is_empty() -> None:
    doc = {"deployments": ["dep_abc${SUFFIX}"]}
    assert config_from_dict(doc, dict(ENV, SUFFIX="")).deployments[0].id == "dep_abc"


def test_double_dollar_is_a_literal_dollar() -> None:
    doc = {"api": {"url": "https://h/$${NOT_A_VAR}/$$"}, "discover": True}
    assert config_from_dict(doc, ENV).api.url == "https://h/${NOT_A_VAR}/$"


def test_expanded_text_is_not_expanded_again() -> None:
    doc = {"api": {"url": "${URL}"}, "discover": True}
    env = dict(ENV, URL="https://h/${OTHER}")
    assert config_from_dict(doc, env).api.url == "https://h/${OTHER}"


def test_undefined_variables_are_each_reported_with_key_and_name() -> None:
    assert errors_of({"api": {"url": "${A}${B}"}, "discover": True}) == [
        "api.url: environment variable A is not set (write ${A:-default} to give a default)",
        "api.url: environment variable B is not set (write ${B:-default} to give a default)",
    ]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("a$b", "'$' at character 2 must start ${VAR}; write $$ for a literal $"),
        ("ab$", "'$' at character 3 must start ${VAR}; write $$ for a literal $"),
        ("${A", "unterminated '${' at character 1"),
        (
            "x${1A}",
            "invalid variable reference '${1A}' at character 2: expected ${VAR} or ${VAR:-default}",
        ),
    ],
)
def test_malformed_references_are_errors(value: str, error: str) -> None:
    assert errors_of({"api": {"url": value}, "discover": True}) == [f"api.url: {error}"]


def test_malformed_reference_in_token_does_not_echo_it() -> None:
    assert errors_of({"api": {"token": "pt-${1x}"}, "discover": True}) == [
        "api.token: invalid variable reference at character 4: expected ${VAR} or ${VAR:-default}"
    ]


def test_numbers_and_booleans_may_come_from_variables() -> None:
    doc = {
        "discover": "${D}",
        "page_size": "${P}",
        "api": {"requests_per_second": "${R}"},
        "duration_buckets": ["${B1}", 10],
    }
    config = config_from_dict(doc, dict(ENV, D="true", P="50", R="2.5", B1="1"))
    assert (config.discover, config.page_size, config.api.requests_per_second) == (True, 50, 2.5)
    assert config.duration_buckets == (1.0, 10.0)


def test_a_number_variable_holding_text_is_an_error() -> None:
    assert errors_of({"discover": True, "page_size": "${P}"}, dict(ENV, P="many")) == [
        "page_size: must be an integer from 1 to 1000, got 'many'"
    ]


# QODER_API_URL


def test_qoder_api_url_overrides_the_file() -> None:
    doc = {"api": {"url": "https://api.qoder.com/api/v1/cloud"}, "discover": True}
    env = dict(ENV, QODER_API_URL="https://api.qoder.com.cn/api/v1/cloud/")
    assert config_from_dict(doc, env).api.url == "https://api.qoder.com.cn/api/v1/cloud"


def test_qoder_api_url_overrides_the_default() -> None:
    env = dict(ENV, QODER_API_URL="http://127.0.0.1:8080")
    assert config_from_dict({"discover": True}, env).api.url == "http://127.0.0.1:8080"


def test_empty_qoder_api_url_is_ignored() -> None:
    assert config_from_dict({"discover": True}, dict(ENV, QODER_API_URL="")).api.url == (
        DEFAULT_API_URL
    )


def test_url_trailing_slashes_are_stripped() -> None:
    doc = {"api": {"url": "http://localhost:9/api/v1/cloud//"}, "discover": True}
    assert config_from_dict(doc, ENV).api.url == "http://localhost:9/api/v1/cloud"


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("localhost:8080", "must be an http:// or https:// URL with a host, got 'localhost:8080'"),
        ("http://", "must be an http:// or https:// URL with a host, got 'http://'"),
        ("http://h:99999", "must be an http:// or https:// URL with a host, got 'http://h:99999'"),
        ("http://[::1", "must be an http:// or https:// URL with a host, got 'http://[::1'"),
        ("http://h /x", "must be an http:// or https:// URL with a host, got 'http://h /x'"),
        ("http://h/?a=1", "must not contain a query or fragment, got 'http://h/?a=1'"),
        ("http://u:pw@h/", "must not contain a user name or password"),
    ],
)
def test_bad_urls(url: str, error: str) -> None:
    assert errors_of({"api": {"url": url}, "discover": True}) == [f"api.url: {error}"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/api/v1/cloud",
        "http://127.9.9.9/x",
        "http://[::1]:9/x",
        "http://localhost:1/x",
        "http://LOCALHOST/x",
    ],
)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    assert config_from_dict({"api": {"url": url}, "discover": True}, ENV).api.url == url


@pytest.mark.parametrize(
    "url", ["http://api.qoder.com/x", "http://10.0.0.1/x", "http://[::2]/x", "http://localhost.x/"]
)
def test_plain_http_elsewhere_is_refused_unless_insecure(url: str) -> None:
    doc: dict[str, object] = {"api": {"url": url}, "discover": True}
    assert errors_of(doc) == [
        "api.url: plain http:// sends the token unencrypted: use https://, "
        f"or set api.insecure: true, got {url!r}"
    ]
    doc["api"] = {"url": url, "insecure": True}
    config = config_from_dict(doc, ENV)
    assert (config.api.url, config.api.insecure) == (url.rstrip("/"), True)


def test_plain_http_from_qoder_api_url_is_refused_too() -> None:
    env = dict(ENV, QODER_API_URL="http://api.qoder.com/x")
    assert errors_of({"discover": True}, env) == [
        "api.url: from QODER_API_URL: plain http:// sends the token unencrypted: use https://, "
        "or set api.insecure: true, got 'http://api.qoder.com/x'"
    ]
    insecure = config_from_dict({"api": {"insecure": True}, "discover": True}, env)
    assert insecure.api.url == "http://api.qoder.com/x"


# The bounds on a hostile API


def test_api_bounds_defaults() -> None:
    api = config_from_dict({"discover": True}, ENV).api
    assert api.max_response_bytes == 8 * 1024 * 1024
    assert (api.deadline, api.max_pages, api.max_clock_skew, api.insecure) == (
        30.0,
        1000,
        300.0,
        False,
    )
    assert not hasattr(api, "connect_timeout")


@pytest.mark.parametrize(
    ("size", "size_bytes"),
    [("512KiB", 512 * 1024), ("8MiB", 8 << 20), ("1GiB", 1 << 30), (65536, 65536), ("70000", 70000),
     ("100000B", 100_000), ("2 MiB", 2 << 20)],
)  # fmt: skip
def test_max_response_size_accepts(size: object, size_bytes: int) -> None:
    doc = {"api": {"max_response_size": size}, "discover": True}
    assert config_from_dict(doc, ENV).api.max_response_bytes == size_bytes


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (65535, "must be from 64KiB to 1GiB, got 65535"),
        ("2GiB", "must be from 64KiB to 1GiB, got '2GiB'"),
        ("8MB", "must be a size like 512KiB or 8MiB, got '8MB'"),
        ("-1MiB", "must be a size like 512KiB or 8MiB, got '-1MiB'"),
        (1.5, "must be a size like 512KiB or 8MiB, got 1.5"),
        (True, "must be a size like 512KiB or 8MiB, got true"),
        (10**400, "must be from 64KiB to 1GiB, got a very large integer"),
    ],
)
def test_max_response_size_rejects(size: object, error: str) -> None:
    doc = {"api": {"max_response_size": size}, "discover": True}
    assert errors_of(doc) == [f"api.max_response_size: {error}"]


def test_deadline_must_cover_the_timeout_and_grows_with_it_when_unset() -> None:
    doc: dict[str, object] = {"api": {"timeout": "10s", "deadline": "10s"}, "discover": True}
    assert config_from_dict(doc, ENV).api.deadline == 10.0
    doc["api"] = {"timeout": "45s"}
    assert config_from_dict(doc, ENV).api.deadline == 45.0
    doc["api"] = {"deadline": "5s"}
    assert errors_of(doc) == ["api.deadline: must be at least api.timeout (10s), got '5s'"]


def test_max_pages_range() -> None:
    for pages in (1, 100_000):
        doc = {"api": {"max_pages": pages}, "discover": True}
        assert config_from_dict(doc, ENV).api.max_pages == pages
    assert errors_of({"api": {"max_pages": 100_001}, "discover": True}) == [
        "api.max_pages: must be an integer from 1 to 100000, got 100001"
    ]


def test_bounds_may_come_from_variables() -> None:
    doc = {
        "api": {"max_response_size": "${SIZE}", "max_pages": "${PAGES}", "insecure": "${INS}"},
        "discover": True,
    }
    api = config_from_dict(doc, dict(ENV, SIZE="131072", PAGES="7", INS="true")).api
    assert (api.max_response_bytes, api.max_pages, api.insecure) == (131072, 7, True)


def test_page_size_set_tells_an_explicit_default_from_none() -> None:
    assert not config_from_dict({"discover": True}, ENV).page_size_set
    assert not config_from_dict({"discover": True, "page_size": None}, ENV).page_size_set
    explicit = config_from_dict({"discover": True, "page_size": 100}, ENV)
    assert (explicit.page_size, explicit.page_size_set) == (100, True)


def test_client_defaults_are_configs_defaults() -> None:
    client = QoderClient("https://h", Secret(TOKEN))
    api = ApiConfig()
    assert client.timeout[1] == api.timeout
    assert client.max_retries == api.max_retries
    assert client.bucket.rate == api.requests_per_second
    client.session.close()


# Token


@pytest.mark.parametrize(
    "text",
    [
        "api:\n  token: *pt-LEAK-9f8e7d\ndiscover: true\n",
        "api:\n  token: !pt-LEAK-9f8e7d\ndiscover: true\n",
        "api:\n  token: !pt-LEAK-9f8e7d!x y\ndiscover: true\n",
        "api:\n  token: !<pt-LEAK-9f8e7d> y\ndiscover: true\n",
        "api:\n  token: &pt-LEAK-9f8e7d a\n  url: &pt-LEAK-9f8e7d b\ndiscover: true\n",
        "api:\n  token: [*pt-LEAK-9f8e7d\n",
        "api: {token: !!binary pt-LEAK-9f8e7d}\n",
        "api:\n  token: pt-LEAK-9f8e7d\x07\n",
    ],
    ids=["alias", "tag", "tag handle", "verbatim tag", "anchor", "unclosed", "binary", "control"],
)
def test_yaml_syntax_around_a_token_is_never_echoed(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert "LEAK" not in str(caught.value)
    check = subprocess.run(
        [sys.executable, str(ROOT / "exporter.py"), "--config", str(path), "--config.check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "QODER_PAT": ""},
    )
    assert check.returncode != 0
    assert "LEAK" not in check.stdout + check.stderr
    assert "invalid configuration" in check.stderr


def test_yaml_syntax_errors_keep_their_punctuation_and_token_kinds(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("api: [1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert caught.value.errors == [
        f"{path}:2:1: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 1, column 6)"
    ]


def test_explicit_token_beats_qoder_pat() -> None:
    config = config_from_dict({"api": {"token": "pt-other"}, "discover": True}, ENV)
    assert config.api.token.reveal() == "pt-other"


def test_qoder_pat_is_stripped() -> None:
    config = config_from_dict({"discover": True}, {"QODER_PAT": f" {TOKEN}\n"})
    assert config.api.token.reveal() == TOKEN


def test_blank_qoder_pat_counts_as_unset() -> None:
    assert errors_of({"discover": True}, {"QODER_PAT": "  "}) == [
        "api.token: no token: set api.token, api.token_file or the QODER_PAT environment variable"
    ]


@pytest.mark.parametrize(
    ("token", "error"),
    [
        ("", "must not be empty"),
        (12345678, "must be a string, got a number"),
        (["pt-x"], "must be a string, got a list"),
        ("pt-é", "must be printable ASCII without spaces"),
        ("pt-a\nb", "must be printable ASCII without spaces"),
    ],
)
def test_bad_tokens_are_rejected_without_echo(token: object, error: str) -> None:
    assert errors_of({"api": {"token": token}, "discover": True}) == [f"api.token: {error}"]


def test_token_file_too_large(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 100_000)
    doc = {"api": {"token_file": "big"}, "discover": True}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(doc, {}, base_dir=str(tmp_path))
    assert caught.value.errors == [
        f"api.token_file: '{tmp_path / 'big'}' is too large to hold a token"
    ]


def test_token_file_with_bom_and_crlf(tmp_path: Path) -> None:
    (tmp_path / "pat").write_bytes(b"\xef\xbb\xbfpt-bom\r\n")
    doc = {"api": {"token_file": str(tmp_path / "pat")}, "discover": True}
    assert config_from_dict(doc, {}).api.token.reveal() == "pt-bom"


def test_token_never_in_repr_or_str_of_config_objects() -> None:
    config = config_from_dict({"api": {"token": TOKEN}, "deployments": [DEP_A]}, {})
    assert config.api.token.reveal() == TOKEN
    for text in (repr(config), str(config), repr(config.api), str(config.api)):
        assert TOKEN not in text
        assert "Secret('********')" in text


def test_token_pasted_into_another_field_is_masked_in_errors() -> None:
    long_prefix = "x" * 70
    errors = errors_of({"api": {"url": long_prefix + "${QODER_PAT}"}, "discover": True})
    assert len(errors) == 1
    assert TOKEN[:6] not in errors[0]
    errors = errors_of({"api": {"token": TOKEN}, "deployments": [TOKEN]}, {})
    assert errors == ["deployments[0]: must be a deployment id like 'dep_0123abcd', got '********'"]


def test_token_never_in_config_error_text() -> None:
    docs: list[object] = [
        {"api": {"token": TOKEN, "token_file": "x"}, "discover": True},
        {"api": {"token": TOKEN + " "}, "discover": True},
        {"api": {"token": TOKEN, "url": TOKEN}, "discover": True},
        {"api": {"url": "${QODER_PAT}"}, "discover": True},
        {"deployments": ["${QODER_PAT}"]},
        {"discover": "${QODER_PAT}", "page_size": "${QODER_PAT}"},
        TOKEN,
    ]
    for doc in docs:
        with pytest.raises(ConfigError) as caught:
            config_from_dict(doc, ENV)
        assert TOKEN not in str(caught.value)
        assert TOKEN not in repr(caught.value)


# Secret


def test_secret_hides_itself() -> None:
    secret = Secret(TOKEN)
    assert repr(secret) == "Secret('********')"
    assert str(secret) == "********"
    assert f"{secret}" == "********"
    assert f"{secret:>20}" == "********"
    assert "%s %r" % (secret, secret) == "******** Secret('********')"  # noqa: UP031
    assert secret.reveal() == TOKEN


def test_secret_equality_hash_and_truth() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))
    assert bool(Secret("a"))
    assert not Secret("")


# Other rules


def test_config_is_frozen() -> None:
    config = config_from_dict({"discover": True}, ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.page_size = 5  # type: ignore[misc]


def test_null_values_mean_the_default() -> None:
    doc = {"api": None, "deployments": None, "discover": True, "page_size": None}
    config = config_from_dict(doc, ENV)
    assert config.page_size == 100
    assert config.api == ApiConfig(token=Secret(TOKEN))


def test_empty_deployments_with_discover_is_fine() -> None:
    assert config_from_dict({"deployments": [], "discover": True}, ENV).discover is True


def test_deployment_lookback_override_and_duplicates_across_forms() -> None:
    config = config_from_dict({"deployments": [{"id": DEP_A, "lookback": "2h"}, DEP_B]}, ENV)
    assert config.deployments == (DeploymentConfig(DEP_A, 7200.0), DeploymentConfig(DEP_B))


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (
            {"discover": True, "concurrency": 1.0},
            "concurrency: must be an integer from 1 to 64, got 1.0",
        ),
        (
            {"discover": True, "page_size": False},
            "page_size: must be an integer from 1 to 1000, got false",
        ),
        (
            {"discover": True, "api": {"requests_per_second": True}},
            "api.requests_per_second: must be a number greater than 0 and at most 1000, got true",
        ),
        (
            {"discover": True, "api": {"requests_per_second": 1001}},
            "api.requests_per_second: must be a number greater than 0 and at most 1000, got 1001",
        ),
        (
            {"discover": True, "api": {"requests_per_second": float("nan")}},
            "api.requests_per_second: must be a number greater than 0 and at most 1000, got nan",
        ),
        (
            {"discover": True, "poll_interval": True},
            "poll_interval: must be a positive duration like 10s, got true",
        ),
        (
            {"discover": True, "lookback": 0},
            "lookback: must be a positive duration like 10s, got 0",
        ),
        (
            {"discover": True, "lookback": [1]},
            "lookback: must be a positive duration like 10s, got a list",
        ),
        ({"discover": 1}, "discover: must be true or false, got 1"),
        (
            {"discover": True, "duration_buckets": [1, True]},
            "duration_buckets[1]: must be a positive number of seconds, got true",
        ),
        (
            {"discover": True, "duration_buckets": "1,2"},
            "duration_buckets: must be a non-empty list of bucket upper bounds in seconds, "
            "got '1,2'",
        ),
        (
            {"discover": True, "duration_buckets": [0, 1]},
            "duration_buckets[0]: must be a positive number of seconds, got 0",
        ),
        (
            {"discover": True, "poll_interval": "2d"},
            "lookback: must be at least poll_interval (2d), got the default 1d",
        ),
        (
            {"deployments": [None]},
            "deployments[0]: must be a deployment id or a mapping with id and lookback, got null",
        ),
        (
            {"deployments": ["dep_a/b"]},
            "deployments[0]: must be a deployment id like 'dep_0123abcd', got 'dep_a/b'",
        ),
        ({"deployments": [{"id": 5}]}, "deployments[0].id: must be a string, got 5"),
        (
            {"discover": True, 7: 1},
            "[7]: unknown key (expected one of: api, deployments, discover, "
            "poll_interval, lookback, page_size, concurrency, duration_buckets, state_file, "
            "metrics, sessions, sessions_timeout, accounts)",
        ),
    ],
)
def test_single_rule_errors(doc: object, error: str) -> None:
    assert errors_of(doc) == [error]


def test_api_not_a_mapping_does_not_also_report_a_missing_token() -> None:
    assert errors_of({"api": [1], "discover": True}, {}) == ["api: must be a mapping, got a list"]


def test_huge_numbers_are_range_errors_not_crashes() -> None:
    assert errors_of({"discover": True, "page_size": 10**5000}) == [
        "page_size: must be an integer from 1 to 1000, got a very large integer"
    ]
    assert errors_of({"discover": True, "duration_buckets": [10**400]}) == [
        "duration_buckets[0]: must be finite: the +Inf bucket is always added"
    ]


# Property: any document gives a Config or a ConfigError whose lines all name a key path.

_KEY_PATH = re.compile(r"(<top level>|(?:[A-Za-z_]\w*|\[.+?\])(?:\.[A-Za-z_]\w*|\[.+?\])*): \S")
_strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "30s",
            "1h30m",
            "0s",
            "-1s",
            "500ms",
            "5min",
            "abc",
            "",
            "true",
            "dep_abc",
            "dep_",
            "${QODER_PAT}",
            "${UNSET}",
            "${UNSET:-7}",
            "${NUM}",
            "$$",
            "$",
            "${",
            "http://h",
            "https://u:p@h",
            "ftp://x",
            "pat.txt",
            "/nonexistent/pat",
        ]
    ),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    _strings,
    st.integers(min_value=-(10**500), max_value=10**500),
)
_keys = st.one_of(
    st.sampled_from(
        [
            *_TOP_KEYS,
            *_API_KEYS,
            "id",
            "tokn",
        ]
    ),
    st.text(max_size=8),
    st.integers(),
    st.none(),
    st.booleans(),
    st.floats(),
)
_any = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=20,
)
_api = st.dictionaries(
    st.sampled_from([*_API_KEYS, "tokn"]),
    _any,
    max_size=4,
)
_deployment = st.one_of(
    _strings, _any, st.dictionaries(st.sampled_from(["id", "lookback", "x"]), _any, max_size=3)
)
_shaped = st.dictionaries(
    st.sampled_from(_TOP_KEYS),
    st.one_of(_any, _api, st.lists(_deployment, max_size=4), st.lists(_scalars, max_size=4)),
    max_size=6,
)
_env = st.fixed_dictionaries(
    {"NUM": st.sampled_from(["5", "x", "1.5", "true", ""])},
    optional={"QODER_PAT": st.just(TOKEN), "QODER_API_URL": st.sampled_from(["http://h", "h"])},
)


@pytest.mark.system
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.one_of(_any, _shaped), env=_env)
def test_any_document_gives_a_config_or_a_config_error_naming_key_paths(
    doc: object, env: dict[str, str]
) -> None:
    try:
        config = config_from_dict(doc, env, base_dir=str(DATA / "good"))
    except ConfigError as exc:
        assert exc.errors
        for line in exc.errors:
            assert "\n" not in line
            match = _KEY_PATH.match(line)
            assert match, line
            root = re.split(r"[.\[]", match.group(1), maxsplit=1)[0]
            unknown = line[match.end() - 1 :].startswith("unknown key (")
            assert root in ("<top level>", *_TOP_KEYS) or unknown, line
        assert TOKEN not in str(exc)
    else:
        assert isinstance(config, Config)
        assert TOKEN not in repr(config)
        assert config.discover != bool(config.deployments)
