"""Shared test fixtures: runners pinned to in-process Beam (no downloads), small catalogs."""
from __future__ import annotations

from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

#: Real HSC stamps and PSFs shipped with the tests (origin and licence in their README.md).
REAL_HSC = Path(__file__).resolve().parent / "data" / "real_hsc"


@pytest.fixture
def fnapi_options() -> PipelineOptions:
    return PipelineOptions(["--runner=FnApiRunner"])


def hsc_csv(header: list[str], rows: list[str], meta: int = 2) -> bytes:
    """A small HSC-export style CSV: `meta` '#' lines, a '# ' header, then `rows` verbatim."""
    lines = [f"# metadata line {i}" for i in range(meta)]
    lines.append("# " + ",".join(header))
    return ("\n".join(lines + rows) + "\n").encode()
