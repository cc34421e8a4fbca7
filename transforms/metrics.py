"""Beam counters named like the funnel keys of summary.json (namespace "galaxiesml")."""
from __future__ import annotations

from typing import Mapping

from apache_beam.metrics import Metrics

NAMESPACE = "galaxiesml"


def increment(counts: Mapping[str, int]) -> None:
    """Add each count to the counter of the same name."""
    for name, value in counts.items():
        if value:
            Metrics.counter(NAMESPACE, name).inc(value)
