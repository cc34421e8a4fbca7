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


def galaxy_targets(sky) -> list:
    """The galaxies of a synthetic sky as cutout-client Targets, in truth-table order."""
    from galaxiesml.hsc.cutout_client import Target

    return [Target(t["object_id"], t["ra"], t["dec"]) for t in sky.truth.to_pylist() if t["kind"] == "galaxy"]
