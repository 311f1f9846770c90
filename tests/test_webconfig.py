"""--web.config.file over real sockets: TLS, client certificates, basic auth, the handshake
off the accept loop, certificate rotation, bad files, and POST /-/reload.

Certificates are made at test time with the openssl CLI: a CA, a server certificate for
127.0.0.1, a client certificate from the same CA and one from a stranger CA.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import os
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from qoder_exporter.collector import Exposition
from qoder_exporter.server import ExporterServer
from qoder_exporter.snapshot import Snapshot
from qoder_exporter.webconfig import BasicAuth, WebConfigError, load_web_config

from .conftest import announced_port
from .harness import require_tool

ROOT = Path(__file__).resolve().parent.parent
# Cost 4, the minimum, keeps the tests fast; the timing test makes its own cost-10 hash.
ALICE_PW = "alice-secret"
ALICE_HASH = bcrypt.hashpw(ALICE_PW.encode(), bcrypt.gensalt(rounds=4)).decode()
# htpasswd -B writes $2y$ hashes; bcrypt verifies them alike.
BOB_PW = "bob-secret"
BOB_HASH = "$2y$" + bcrypt.hashpw(BOB_PW.encode(), bcrypt.gensalt(rounds=4)).decode()[4:]


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    stranger_crt: Path
    stranger_key: Path

    def make_leaf(self, name: str, serial: int, usage: str = "serverAuth") -> tuple[Path, Path]:
        return _leaf(self.dir, name, "ca", serial, usage)


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(
        [require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def _ca(cwd: Path, name: str) -> None:
    _openssl(
        cwd, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}",
        "-days", "2", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _leaf(cwd: Path, name: str, ca: str, serial: int, usage: str) -> tuple[Path, Path]:
    (cwd / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        cwd, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-set_serial", str(serial), "-days", "2", "-extfile", f"{name}.ext",
        "-out", f"{name}.crt",
    )  # fmt: skip
    return cwd / f"{name}.crt", cwd / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    cwd = tmp_path_factory.mktemp("pki")
    _ca(cwd, "ca")
    _ca(cwd, "stranger-ca")
    server = _leaf(cwd, "server", "ca", 1001, "serverAuth")
    client = _leaf(cwd, "client", "ca", 2001, "clientAuth")
    stranger = _leaf(cwd, "stranger", "stranger-ca", 3001, "clientAuth")
    return Pki(cwd, cwd / "ca.crt", *server, *client, *stranger)


def tls_yaml(
    pki: Pki, extra: str = "", *, cert: Path | None = None, key: Path | None = None
) -> str:
    return (
        "tls_server_config:\n"
        f"  cert_file: {cert or pki.server_crt}\n"
        f"  key_file: {key or pki.server_key}\n" + extra
    )


def users_yaml(**users: str) -> str:
    return "basic_auth_users:\n" + "".join(f"  {u}: '{h}'\n" for u, h in users.items())


def write_atomically(path: Path, text: str) -> None:
    """Replace path by a new file, as a rotation tool or a Kubernetes secret update does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def serving(tmp_path: Path, web_yaml: str, **kwargs: object) -> Iterator[ExporterServer]:
    web = tmp_path / "web.yml"
    web.write_text(web_yaml)
    exposition = Exposition(Snapshot(taken_at=time.time(), buckets=(10.0,)), time.time)
    server = ExporterServer(
        exposition,
        ("127.0.0.1", 0),
        healthy=lambda: True,
        web_config_file=str(web),
        **kwargs,  # type: ignore[arg-type]
    )
    server.start()
    try:
        yield server
    finally:
        server.close()


def client_context(
    pki: Pki, cert: tuple[Path, Path] | None = None, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    if max_version:
        context.maximum_version = max_version
    return context


def basic(user: str | bytes, password: str | bytes) -> dict[str, str]:
    raw = (user if isinstance(user, bytes) else user.encode()) + b":"
    raw += password if isinstance(password, bytes) else password.encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def request(
    server: ExporterServer,
    path: str,
    *,
    context: ssl.SSLContext | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=context, timeout=timeout
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def peer_serial(server: ExporterServer, context: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cert = tls.getpeercert()
        assert cert is not None
        return int(str(cert["serialNumber"]), 16)


def wait_closed(sock: socket.socket, timeout: float, drip: bytes = b"") -> float:
    """Seconds until the server closes sock; sends drip every 0.1 s meanwhile, if given."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if drip:
                sock.send(drip)
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and sock.recv(1024) == b"":
                return time.monotonic() - start
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    raise AssertionError(f"connection still open after {timeout}s")


# TLS


def test_tls_serves_https_to_a_tls12_client(pki: Pki, tmp_path: Path) -> None:
    with serving(tmp_path, tls_yaml(pki)) as server:
        assert server.scheme == "https"
        context = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)
        status, _, body = request(server, "/metrics", context=context)
        assert status == 200 and b"qoder_up" in body
        web = server.web_config()
        assert web is not None and web.context is not None
        assert web.context.minimum_version == ssl.TLSVersion.TLSv1_2


def tls11_client(pki: Pki) -> ssl.SSLContext:
    context = client_context(pki)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def tls11_works_here(pki: Pki) -> bool:
    """Whether this OpenSSL still negotiates TLS 1.1 at all: many builds no longer do."""
    try:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = server.maximum_version = ssl.TLSVersion.TLSv1_1
        server.set_ciphers("DEFAULT:@SECLEVEL=0")
        server.load_cert_chain(str(pki.server_crt), str(pki.server_key))
        client = tls11_client(pki)
    except (ValueError, ssl.SSLError):
        return False
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    theirs.settimeout(5)
    accepting = threading.Thread(target=_accept_quietly, args=(server, theirs), daemon=True)
    accepting.start()
    try:
        with client.wrap_socket(ours, server_hostname="127.0.0.1") as tls:
            return tls.version() == "TLSv1.1"
    except (OSError, ssl.SSLError):
        return False
    finally:
        accepting.join(5)
        theirs.close()


def _accept_quietly(context: ssl.SSLContext, sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        context.wrap_socket(sock, server_side=True).close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls11_client_is_refused(pki: Pki, tmp_path: Path) -> None:
    if not tls11_works_here(pki):
        pytest.skip("this OpenSSL cannot do TLS 1.1 (minimum_version is checked above)")
    context = tls11_client(pki)
    with serving(tmp_path, tls_yaml(pki)) as server, pytest.raises(ssl.SSLError):
        request(server, "/metrics", context=context)


def test_min_version_tls13_refuses_a_tls12_client(pki: Pki, tmp_path: Path) -> None:
    with serving(tmp_path, tls_yaml(pki, "  min_version: TLS13\n")) as server:
        with pytest.raises(ssl.SSLError):
            request(server, "/metrics", context=client_context(pki, None, ssl.TLSVersion.TLSv1_2))
        assert request(server, "/metrics", context=client_context(pki))[0] == 200


def test_required_client_certificate(pki: Pki, tmp_path: Path) -> None:
    extra = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n"
    with serving(tmp_path, tls_yaml(pki, extra)) as server:
        good = client_context(pki, (pki.client_crt, pki.client_key))
        assert request(server, "/metrics", context=good)[0] == 200
        stranger = client_context(pki, (pki.stranger_crt, pki.stranger_key))
        for context in (client_context(pki), stranger):
            # TLS 1.3 reports a refused client certificate after the handshake, on first read.
            with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.HTTPException)):
                request(server, "/metrics", context=context)
        assert request(server, "/metrics", context=good)[0] == 200


def test_optional_client_certificate_is_checked_when_given(pki: Pki, tmp_path: Path) -> None:
    extra = f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki.ca}\n"
    with serving(tmp_path, tls_yaml(pki, extra)) as server:
        assert request(server, "/metrics", context=client_context(pki))[0] == 200
        good = client_context(pki, (pki.client_crt, pki.client_key))
        assert request(server, "/metrics", context=good)[0] == 200
        stranger = client_context(pki, (pki.stranger_crt, pki.stranger_key))
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.HTTPException)):
            request(server, "/metrics", context=stranger)


def test_idle_tcp_clients_do_not_block_a_scrape(pki: Pki, tmp_path: Path) -> None:
    # prometheus_client's TLS server handshakes in the accept loop: there, one silent
    # connection holds every other scrape until it goes away.
    # The idle clients outlast the scrape's 5 s timeout: a blocked scrape times out.
    with serving(tmp_path, tls_yaml(pki), handshake_timeout=60) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            status, _, _ = request(server, "/metrics", context=client_context(pki), timeout=5)
        finally:
            for sock in idle:
                sock.close()
        assert status == 200


def test_handshake_deadline_closes_silent_and_dripping_clients(pki: Pki, tmp_path: Path) -> None:
    with serving(tmp_path, tls_yaml(pki), handshake_timeout=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as silent:
            assert wait_closed(silent, timeout=5) > 0.3
        # A TLS record header announcing 512 bytes, then one byte every 0.1 s: a per-read
        # timeout would never fire; the deadline for the whole handshake does.
        with socket.create_connection(("127.0.0.1", server.port)) as drip:
            drip.sendall(b"\x16\x03\x01\x02\x00")
            assert wait_closed(drip, timeout=5, drip=b"\x00") > 0.3
        assert request(server, "/metrics", context=client_context(pki))[0] == 200


def test_rotated_certificate_applies_without_restart(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.server_crt.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    with serving(tmp_path, tls_yaml(pki, cert=cert, key=key)) as server:
        context = client_context(pki)
        assert peer_serial(server, context) == 1001
        new_cert, new_key = pki.make_leaf("rotated", 1002)
        # Certificate first, key second: in between, the pair does not match and the old
        # config stays in force.
        write_atomically(cert, new_cert.read_text())
        assert peer_serial(server, context) == 1001
        write_atomically(key, new_key.read_text())
        assert peer_serial(server, context) == 1002
        assert request(server, "/metrics", context=context)[0] == 200


def test_http_server_config_headers_are_sent(tmp_path: Path) -> None:
    web = (
        "http_server_config:\n  headers:\n"
        "    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n"
    )
    with serving(tmp_path, web) as server:
        for path in ("/metrics", "/", "/-/healthy", "/nope"):
            _, headers, _ = request(server, path)
            assert headers["X-Frame-Options"] == "deny"
            assert headers["Strict-Transport-Security"] == "max-age=31536000"


# Basic auth


def test_right_passwords_are_let_in(tmp_path: Path) -> None:
    with serving(tmp_path, users_yaml(alice=ALICE_HASH, bob=BOB_HASH)) as server:
        assert server.scheme == "http"
        status, _, body = request(server, "/metrics", headers=basic("alice", ALICE_PW))
        assert status == 200 and b"qoder_up" in body
        assert request(server, "/metrics", headers=basic("bob", BOB_PW))[0] == 200
        # Again: the cached success answers the same.
        assert request(server, "/metrics", headers=basic("alice", ALICE_PW))[0] == 200


@pytest.mark.parametrize(
    "headers",
    [
        basic("alice", "wrong"),
        basic("alice", ""),
        basic("mallory", ALICE_PW),
        basic("alice", ALICE_PW + "x"),
        basic("alice", "a" * 100),
        {"Authorization": "Bearer " + ALICE_PW},
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Basic " + base64.b64encode(b"alice").decode()},
        {},
    ],
    ids=[
        "wrong-password",
        "empty-password",
        "unknown-user",
        "longer-password",
        "100-byte-password",
        "bearer",
        "bad-base64",
        "no-colon",
        "no-header",
    ],
)
def test_bad_credentials_get_401_with_a_challenge(tmp_path: Path, headers: dict[str, str]) -> None:
    with serving(tmp_path, users_yaml(alice=ALICE_HASH)) as server:
        status, response_headers, _ = request(server, "/metrics", headers=headers)
        assert status == 401
        assert response_headers["WWW-Authenticate"].startswith('Basic realm="qoder-exporter"')


def test_password_over_72_bytes_gets_401_even_if_its_start_is_right(tmp_path: Path) -> None:
    # bcrypt reads 72 bytes: older versions truncate (so this would match), newer ones raise.
    password = "p" * 72
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    with serving(tmp_path, users_yaml(carol=hashed)) as server:
        assert request(server, "/metrics", headers=basic("carol", password))[0] == 200
        for extra in (28, 1000):
            too_long = basic("carol", password + "p" * extra)
            assert request(server, "/metrics", headers=too_long)[0] == 401


def test_cache_cannot_be_poisoned_by_fields_running_together(tmp_path: Path) -> None:
    # CVE-2022-46146: a cache keyed on user + hash + password let "alice<hash>" with alice's
    # password in once alice had logged in, since an unknown user's hash was "".
    with serving(tmp_path, users_yaml(alice=ALICE_HASH)) as server:
        assert request(server, "/metrics", headers=basic("alice", ALICE_PW))[0] == 200
        for user, password in [
            ("alice" + ALICE_HASH, ALICE_PW),
            ("alice" + ALICE_HASH + ALICE_PW, ""),
            ("", ALICE_PW),
            ("alic", "e" + ALICE_PW),
        ]:
            assert request(server, "/metrics", headers=basic(user, password))[0] == 401


def test_unknown_user_costs_a_bcrypt_check_like_a_known_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=10)).decode()
    checked: list[bytes] = []  # the hash each bcrypt check ran against
    checkpw = bcrypt.checkpw

    def counting(password: bytes, against: bytes) -> bool:
        checked.append(against)
        return checkpw(password, against)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    with serving(tmp_path, users_yaml(dave=hashed)) as server:
        assert request(server, "/metrics", headers=basic("dave", "wrong"))[0] == 401
        assert request(server, "/metrics", headers=basic("nobody", "wrong"))[0] == 401
    # The same work either way (counted, not timed): one check each, at the same cost.
    assert len(checked) == 2, checked
    known, unknown = checked
    assert known == hashed.encode()
    assert unknown != known and unknown[:7] == known[:7], "$2b$10$: same algorithm and cost"


class _CostRecorder:
    """bcrypt, recording the cost of every hash a password is checked against."""

    def __init__(self) -> None:
        self.costs: list[int] = []

    def checkpw(self, password: bytes, hashed: bytes) -> bool:
        self.costs.append(int(hashed[4:6]))
        return bool(bcrypt.checkpw(password, hashed))


def test_a_failed_check_costs_the_costliest_users_check_whoever_is_named() -> None:
    # Timing-free: the work done is read from the hashes checked, not from a clock.
    carol_hash = bcrypt.hashpw(b"carol-pw", bcrypt.gensalt(rounds=4)).decode()
    dave_hash = bcrypt.hashpw(b"dave-pw", bcrypt.gensalt(rounds=6)).decode()
    auth = BasicAuth({"alice": ALICE_HASH, "carol": carol_hash, "dave": dave_hash})
    recorder = _CostRecorder()
    auth._bcrypt = recorder
    for user in ("nobody", "alice", "carol", "dave"):
        recorder.costs.clear()
        assert auth.check(basic(user, "wrong")["Authorization"]) is None
        assert max(recorder.costs) == 6, (user, recorder.costs)
    recorder.costs.clear()
    assert auth.check(basic("alice", ALICE_PW)["Authorization"]) == "alice"
    assert recorder.costs == [4], "a right password is not slowed down"


def test_differing_bcrypt_costs_are_warned_about_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dave_hash = bcrypt.hashpw(b"dave-pw", bcrypt.gensalt(rounds=5)).decode()
    with serving(tmp_path, users_yaml(alice=ALICE_HASH, bob=BOB_HASH)):
        assert not [r for r in caplog.records if "costs differ" in r.getMessage()]
    with serving(tmp_path, users_yaml(alice=ALICE_HASH, dave=dave_hash)):
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [w for w in warnings if "bcrypt costs differ (4, 5)" in w], warnings


def test_healthy_is_open_and_everything_else_needs_auth(tmp_path: Path) -> None:
    with serving(tmp_path, users_yaml(alice=ALICE_HASH), reload=lambda: (True, "ok")) as server:
        assert request(server, "/-/healthy")[0] == 200
        for method, path in [
            ("GET", "/metrics"),
            ("HEAD", "/metrics"),
            ("GET", "/"),
            ("GET", "/-/ready"),
            ("GET", "/nope"),
            ("POST", "/-/reload"),
        ]:
            assert request(server, path, method=method)[0] == 401, (method, path)
        assert request(server, "/", headers=basic("alice", ALICE_PW))[0] == 200


def test_basic_auth_and_client_certificates_together(pki: Pki, tmp_path: Path) -> None:
    extra = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n"
    with serving(tmp_path, tls_yaml(pki, extra) + users_yaml(alice=ALICE_HASH)) as server:
        context = client_context(pki, (pki.client_crt, pki.client_key))
        assert request(server, "/metrics", context=context)[0] == 401
        headers = basic("alice", ALICE_PW)
        assert request(server, "/metrics", context=context, headers=headers)[0] == 200


# Reloading the web config


def test_changed_users_apply_and_a_bad_file_keeps_the_old_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(tmp_path, users_yaml(alice=ALICE_HASH)) as server:
        web = tmp_path / "web.yml"
        write_atomically(web, users_yaml(bob=BOB_HASH))
        assert request(server, "/metrics", headers=basic("bob", BOB_PW))[0] == 200
        assert request(server, "/metrics", headers=basic("alice", ALICE_PW))[0] == 401
        write_atomically(web, users_yaml(bob=BOB_HASH) + "basic_auth_userz: {}\n")
        for _ in range(3):
            assert request(server, "/metrics", headers=basic("bob", BOB_PW))[0] == 200
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, "a bad file is logged once, not per request"
        assert "basic_auth_userz" in errors[0] and "previous one stays" in errors[0]
        write_atomically(web, users_yaml(alice=ALICE_HASH))
        assert request(server, "/metrics", headers=basic("alice", ALICE_PW))[0] == 200


def test_turning_tls_off_needs_a_restart(pki: Pki, tmp_path: Path) -> None:
    with serving(tmp_path, tls_yaml(pki)) as server:
        write_atomically(tmp_path / "web.yml", users_yaml(alice=ALICE_HASH))
        assert request(server, "/metrics", context=client_context(pki))[0] == 200
        assert server.scheme == "https"


@pytest.mark.parametrize(
    "replacement",
    ["", "# emptied\n", "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"],
    ids=["empty", "comment only", "headers only"],
)
def test_a_reload_never_turns_basic_auth_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, replacement: str
) -> None:
    with serving(tmp_path, users_yaml(alice=ALICE_HASH)) as server:
        # In place, not atomically: a reader may see the file empty, as an editor leaves it.
        (tmp_path / "web.yml").write_text(replacement)
        for _ in range(3):
            assert request(server, "/metrics")[0] == 401
        assert request(server, "/metrics", headers=basic("alice", ALICE_PW))[0] == 200
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "turning basic auth off needs a restart" in errors[0]
        write_atomically(tmp_path / "web.yml", users_yaml(bob=BOB_HASH))
        assert request(server, "/metrics", headers=basic("bob", BOB_PW))[0] == 200


# POST /-/reload


def test_post_reload_calls_the_hook(tmp_path: Path) -> None:
    answers: list[tuple[bool, str]] = [(True, "config reloaded"), (False, "bad: api.url")]

    def hook() -> tuple[bool, str]:
        return answers.pop(0)

    with serving(tmp_path, "", reload=hook) as server:
        status, _, body = request(server, "/-/reload", method="POST")
        assert (status, body) == (200, b"config reloaded\n")
        status, _, body = request(server, "/-/reload", method="POST")
        assert (status, body) == (500, b"bad: api.url\n")
        status, headers, _ = request(server, "/-/reload")
        assert status == 405 and headers["Allow"] == "POST"
        assert request(server, "/metrics", method="POST")[0] == 405


def test_post_reload_hook_that_raises_answers_500(tmp_path: Path) -> None:
    def hook() -> tuple[bool, str]:
        raise RuntimeError("boom")

    with serving(tmp_path, "", reload=hook) as server:
        status, _, body = request(server, "/-/reload", method="POST")
        assert status == 500 and b"internal error" in body


def test_post_reload_without_a_hook_is_404(tmp_path: Path) -> None:
    with serving(tmp_path, "") as server:
        assert request(server, "/-/reload", method="POST")[0] == 404
        assert request(server, "/-/reload")[0] == 404


# Bad files


BAD_FILES = [
    ("tls_server_config:\n  cert_fil: x\n", ["tls_server_config.cert_fil: unknown key (did"]),
    ("tls_server_confg: {}\n", ["tls_server_confg: unknown key (did you mean 'tls_server_co"]),
    ("{tls}  min_version: TLS11\n", ["tls_server_config.min_version: TLS11 is not allowed"]),
    ("{tls}  min_version: TLS14\n", ["tls_server_config.min_version: must be TLS12 or TLS13"]),
    ("{tls}  min_version: TLS13\n  max_version: TLS12\n", ["tls_server_config.max_version"]),
    ("{tls}  client_auth_type: Maybe\n", ["tls_server_config.client_auth_type: must be one of"]),
    ("{tls}  client_auth_type: RequireAnyClientCert\n", ["without verifying them"]),
    ("{tls}  client_auth_type: RequireAndVerifyClientCert\n", ["client_ca_file: required"]),
    ("{tls}  client_ca_file: {ca}\n", ["client_ca_file: set, but client_auth_type is NoCli"]),
    ("{tls}  cipher_suites: [X]\n", ["tls_server_config.cipher_suites: not supported"]),
    ("{tls}  cert: inline\n", ["tls_server_config.cert: inline certificates are not supp"]),
    ("tls_server_config:\n  cert_file: nope\n", ["cert_file: no such file", "key_file: missing"]),
    ("tls_server_config:\n", ["tls_server_config: empty"]),
    ("basic_auth_users:\n  alice: hunter2\n", ["basic_auth_users.alice: must be a bcrypt hash"]),
    ("basic_auth_users:\n  'a:b': '{hash}'\n", ["cannot contain ':'"]),
    ("basic_auth_users: [alice]\n", ["basic_auth_users: must be a mapping"]),
    ("http_server_config:\n  headers:\n    Set-Cookie: x\n", ["headers.Set-Cookie: this head"]),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", ["one of deny, sameorig"]),
    ("rate_limit:\n  interval: 1s\n", ["rate_limit: not supported"]),
    ("tls_server_config: {}\ntls_server_config: {}\n", ["duplicate key"]),
    ("[1, 2\n", ["invalid YAML"]),
    ("- a list\n", ["<top level>: must be a mapping, got a list"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), BAD_FILES, ids=[e[0] for _, e in BAD_FILES])
def test_bad_web_config_names_the_key(
    pki: Pki, tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = tmp_path / "web.yml"
    tls = f"tls_server_config:\n  cert_file: {pki.server_crt}\n  key_file: {pki.server_key}\n"
    path.write_text(
        text.replace("{tls}", tls).replace("{ca}", str(pki.ca)).replace("{hash}", ALICE_HASH)
    )
    with pytest.raises(WebConfigError) as caught:
        load_web_config(str(path))
    message = str(caught.value)
    assert message.startswith(f"invalid web config {path}:")
    for part in expected:
        assert part in message
    assert "hunter2" not in message


def test_certificate_problems_name_the_file_at_fault(pki: Pki, tmp_path: Path) -> None:
    wrong_key = "tls_server_config.key_file: not an unencrypted PEM private key"
    not_a_cert = "tls_server_config.cert_file: not a PEM certificate"
    for cert, key, expected in [
        (pki.server_crt, pki.client_key, wrong_key),
        (pki.server_key, pki.server_key, not_a_cert),
    ]:
        with (
            pytest.raises(WebConfigError, match=re.escape(expected)),
            serving(tmp_path, tls_yaml(pki, cert=cert, key=key)),
        ):
            pass


def test_relative_paths_are_read_from_the_web_config_directory(pki: Pki) -> None:
    (pki.dir / "relative.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    )
    config = load_web_config(str(pki.dir / "relative.yml"))
    assert config.tls is not None and config.tls.cert_file == str(pki.server_crt)


def test_missing_bcrypt_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bcrypt", None)  # import bcrypt now raises ImportError
    path = tmp_path / "web.yml"
    path.write_text(users_yaml(alice=ALICE_HASH))
    with pytest.raises(WebConfigError, match=re.escape("pip install qoder-exporter[web]")):
        load_web_config(str(path))


# The command line


def _exporter(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "exporter.py"), "--demo", *args],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.system
def test_bad_web_config_file_stops_the_exporter_at_start(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  min_version: TLS10\n")
    proc = _exporter("--web.listen-address", "127.0.0.1:0", "--web.config.file", str(path))
    try:
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert f"invalid web config {path}" in stderr
    assert "tls_server_config.min_version: TLS10 is not allowed" in stderr
    assert "Traceback" not in stderr


@pytest.mark.system
def test_exporter_serves_https_with_basic_auth(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(tls_yaml(pki) + users_yaml(alice=ALICE_HASH))
    proc = _exporter("--web.listen-address", "127.0.0.1:0", "--web.config.file", str(path))
    try:
        port = announced_port(proc)
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(pki))
        conn.request("GET", "/metrics", headers=basic("alice", ALICE_PW))
        response = conn.getresponse()
        assert response.status == 200 and b"qoder_up" in response.read()
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 401
        conn.close()
    finally:
        proc.kill()
        proc.wait()
