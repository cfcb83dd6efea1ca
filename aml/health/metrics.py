"""Metric samples: the time series health and trace record (catalog table ``metric_samples``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aml.store.timestamps import utc_iso_z


@dataclass(frozen=True)
class MetricSample:
    """One point of a time series.

    Attributes:
        time: aware UTC instant of the measurement.
        name: metric name, e.g. ``"agent_bytes"``, ``"records"``, ``"check_duration"``.
        value: the measured value.
        unit: ``"bytes"``, ``"seconds"``, ``"ratio"`` (0-1) or ``"count"``.
        subject: what the value is about: an agent, ``agent/collection``, a check name, or ``None``
            for the whole store.
    """

    time: datetime
    name: str
    value: float
    unit: str
    subject: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form with an ISO 8601 UTC ``time``."""
        return {"time": utc_iso_z(self.time), "name": self.name, "value": self.value,
                "unit": self.unit, "subject": self.subject}
