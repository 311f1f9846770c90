"""What an API shape decides: how a run renders and what the truth of a run is in that shape.

A shape is one documentation generation of the run object (qoder-api.md §0). Adding a shape is one
new module with a class like these and one entry in SHAPES.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from .stamps import JSON
from .world import Deployment, Run


class Finished(NamedTuple):
    """A finished run as the truth helpers report it."""

    finished_ns: int
    status: str
    duration_s: float | None
    error_type: str | None


class RunShape(Protocol):
    """One API shape of the run object."""

    name: str
    filters_status: bool  # whether list endpoints honour ?status=

    def run_json(self, run: Run, now: int) -> JSON:
        """Render a run as of now."""
        ...

    def status(self, run: Run, now: int) -> str:
        """Return the run's status as this shape presents it (G2: derived from the record)."""
        ...

    def finished(self, run: Run, now: int) -> Finished | None:
        """Return the run's final answer if it has finished by now."""
        ...

    def last_success(self, dep: Deployment, now: int) -> float | None:
        """Return the time of the deployment's newest success in this shape, if any."""
        ...

    def in_flight(self, dep: Deployment, now: int) -> list[Run]:
        """Return the runs this shape shows as pending or running."""
        ...
