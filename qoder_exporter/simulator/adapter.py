"""A `requests` transport adapter that answers from the simulator's handle_request, no sockets.

    session = requests.Session()
    base_url = mount(session, sim)          # http://simulator.invalid/api/v1/cloud
    QoderClient(base_url, token, session=session)

Faults keep their meaning: a reset or an outage raises ConnectionError; a reply delayed (latency or
a "slow" fault) past the read timeout raises ReadTimeout at once instead of sleeping, and a shorter
delay is not waited for, so unit tests never sleep.
"""

from __future__ import annotations

import email.utils
import http
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from .routing import BASE_PATH

if TYPE_CHECKING:
    from .core import Simulator

DEFAULT_ORIGIN = "http://simulator.invalid"


class SimulatorAdapter(BaseAdapter):
    """Serve every request sent through it from one Simulator."""

    def __init__(self, sim: Simulator) -> None:
        super().__init__()
        self.sim = sim

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Answer one prepared request from the simulator."""
        url = request.url or ""
        split = urlsplit(url)
        target = split.path + (f"?{split.query}" if split.query else "")
        headers = {name.lower(): value for name, value in request.headers.items()}
        reply = self.sim.handle_request(request.method or "GET", target, headers)
        if reply.reset:
            raise requests.ConnectionError("connection reset by the simulator", request=request)
        read_timeout = timeout[1] if isinstance(timeout, tuple) else timeout
        if read_timeout is not None and reply.delay_s > read_timeout:
            raise requests.ReadTimeout("the simulator's reply is slower than the timeout")
        response = requests.Response()
        response.status_code = reply.status
        response.reason = _reason(reply.status)
        response.headers = CaseInsensitiveDict(
            {
                "Content-Type": reply.content_type,
                "Content-Length": str(len(reply.body)),
                "Date": email.utils.formatdate(self.sim.clock.now(), usegmt=True),
            }
        )
        for name, value in reply.headers:
            response.headers[name] = value
        response.raw = io.BytesIO(reply.body)
        response.url = url
        response.request = request
        response.encoding = "utf-8" if reply.content_type == "application/json" else None
        return response

    def close(self) -> None:
        """Nothing to release: no connections exist."""


def mount(session: requests.Session, sim: Simulator, origin: str = DEFAULT_ORIGIN) -> str:
    """Route `origin` on `session` to `sim`; return the API base URL to give the client."""
    session.mount(origin + "/", SimulatorAdapter(sim))
    return origin + BASE_PATH


def _reason(status: int) -> str:
    """Return the standard reason phrase of a status code."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
