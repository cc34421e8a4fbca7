"""What a newcomer meets first: a clone that needs nothing beside it, a demo that runs with the
package's own dependencies (no test extra) and can be run again."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.cli import main
from tests.test_packaging import setup_kwargs

ROOT = Path(__file__).resolve().parents[1]
#: Folders of a checkout that are not the repository's own files.
NOT_OURS = {".git", ".venv", "out", "build", "__pycache__", ".pytest_cache"}
#: A path outside the checkout: our notes folder beside it, or a development machine's home or work tree.
OUTSIDE = re.compile(r"\.\./shared|/(?:work|root|home|Users)/[\w.-]")


def repository_files() -> list[Path]:
    return [
        p for p in ROOT.rglob("*")
        if p.is_file() and not NOT_OURS & set(p.relative_to(ROOT).parts) and not p.name.endswith(".egg-info")
        and ".egg-info" not in str(p)
    ]


def test_no_file_names_a_path_outside_the_checkout():
    files = repository_files()
    assert len(files) > 50 and ROOT / "README.md" in files
    found = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:4096]:  # binary: FITS, npz, PNG
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def _closure(requirements: list[str]) -> set[str]:
    """The installed distributions these requirements bring, transitively."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen.add(name)
        todo += [Requirement(r) for r in dist.requires or []]
    return seen


def extra_only_modules() -> list[str]:
    """The modules that only the test extra installs (the ones a fresh `pip install -e .` lacks)."""
    kwargs = setup_kwargs()
    main_job = _closure(kwargs["install_requires"])
    test_only = _closure(kwargs["extras_require"]["test"]) - main_job
    blocked = sorted(
        module for module, dists in packages_distributions().items()
        if {canonicalize_name(d) for d in dists} <= test_only and not module.startswith("_")
    )
    assert "pandas" in blocked and "duckdb" in blocked and "pytest" in blocked
    assert "numpy" not in blocked and "google" not in blocked  # needed by the job (google.protobuf by Beam)
    return blocked


#: Installed as sitecustomize, so that the launcher and every worker process it starts block them.
BLOCKER = """
import os, sys
BLOCKED = set(os.environ["BLOCKED_MODULES"].split(","))
class Absent:
    # finds nothing of the blocked modules: to importers and find_spec alike they are not installed
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [Absent(f) for f in sys.meta_path]
"""


def test_the_demo_runs_without_the_test_extra(tmp_path):
    """`pip install -e .` alone must run the demo: an import that only the test extra satisfies
    (pandas, through pyarrow's to_pandas_dtype, once did) fails here, in the worker processes too."""
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "demo"
    argv = ["demo", "--galaxies", "30", "--seed", "3", "--output", str(out), "--progress_every=0",
            "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'blocker'}:{ROOT}", "BLOCKED_MODULES": ",".join(extra_only_modules())}
    probe = subprocess.run([sys.executable, "-c", "import pandas"], capture_output=True, text=True, env=env)
    assert "No module named 'pandas'" in probe.stderr  # the blocker works
    done = subprocess.run([sys.executable, "-m", "pipeline", *argv, "--verbose"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["funnel"]["kept"] > 0
    assert sorted(p.name for p in (out / "hdf5").iterdir() if p.suffix == ".hdf5")
    from galaxiesml.verify import verify

    assert not verify(out).problems


def test_the_demo_run_again_resumes_or_says_it_is_done(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--galaxies", "12", "--seed", "6", "--output", str(out), "--runner=FnApiRunner", "--progress_every=0"]
    assert main(argv) == 0
    first = json.loads((out / "build.json").read_text())
    assert "127.0.0.1" not in json.dumps(first) and first["synthetic_sky"]
    capsys.readouterr()
    # the stand-in listens on another port every run: the same command is the same build
    assert main(argv) == 0
    assert f"{out} already holds this build, complete: nothing to do" in capsys.readouterr().out
    # a build that did not finish (no completion recorded) resumes from the cache on a new port
    del first["completed"]
    (out / "build.json").write_text(json.dumps(first))
    (out / "summary.json").unlink()
    assert main(argv) == 0
    assert "already holds" not in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["funnel"]["kept"] > 0
