"""What users get wrong gets one line saying what to do, and no traceback."""
from __future__ import annotations

import builtins
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.catalog_rows import HEADER, csv_line, row
from tests.conftest import hsc_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_bytes(hsc_csv(HEADER, [csv_line(row())]))
    return path


@pytest.fixture(autouse=True)
def no_account(monkeypatch):
    for var in ("HSC_SSP_CAS_USER", "HSC_SSP_CAS_PASSWORD", "SSP_PDR_USR", "SSP_PDR_PWD"):
        monkeypatch.delenv(var, raising=False)


def error_of(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ")
    return err


def test_missing_or_unreadable_catalog(capsys, tmp_path):
    assert "no catalog file matches" in error_of(capsys, "--catalog", str(tmp_path / "none.csv"), "--output", str(tmp_path / "o"))
    bad = tmp_path / "broken.csv.gz"
    bad.write_bytes(b"this is not gzip")
    assert "cannot be read" in error_of(capsys, "--catalog", str(bad), "--output", str(tmp_path / "o"), "--cutout_source=none")


def test_catalog_without_the_needed_columns_names_them(capsys, tmp_path):
    path = tmp_path / "cat.csv"
    path.write_bytes(hsc_csv([h for h in HEADER if h not in ("ra", "specz_name")], []))
    err = error_of(capsys, "--catalog", str(path), "--output", str(tmp_path / "o"), "--cutout_source=none")
    assert "missing required column(s) specz_name, ra" in err


def test_output_directory_holding_another_build(capsys, catalog, tmp_path):
    out = str(tmp_path / "o")
    assert main(["--catalog", str(catalog), "--output", out, "--cutout_source=none", "--runner=FnApiRunner"]) == 0
    capsys.readouterr()
    err = error_of(capsys, "--catalog", str(catalog), "--output", out, "--cutout_source=none", "--split_seed", "9")
    assert "holds another build" in err and "split_seed" in err and "--overwrite" in err
    # the same build again resumes; --overwrite replaces
    assert main(["--catalog", str(catalog), "--output", out, "--cutout_source=none", "--runner=FnApiRunner"]) == 0
    assert main(["--catalog", str(catalog), "--output", out, "--cutout_source=none", "--split_seed", "9",
                 "--overwrite", "--runner=FnApiRunner"]) == 0


def test_missing_credentials_and_unreachable_service(capsys, catalog, tmp_path, monkeypatch):
    err = error_of(capsys, "--catalog", str(catalog), "--output", str(tmp_path / "o"))
    assert "HSC_SSP_CAS_USER" in err and "HSC_SSP_CAS_PASSWORD" in err
    monkeypatch.setenv("HSC_SSP_CAS_USER", "u")
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", "p-secret-1")
    err = error_of(capsys, "--catalog", str(catalog), "--output", str(tmp_path / "o"), "--hsc_url", "http://127.0.0.1:9/cutout")
    assert "cannot reach the HSC cutout service at http://127.0.0.1:9/cutout" in err
    assert "p-secret-1" not in err


def test_gs_path_without_the_gcp_extra(capsys, catalog, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_gcp(name, *args, **kwargs):
        if name.startswith("google.cloud") or name.startswith("apache_beam.io.gcp"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gcp)
    err = error_of(capsys, "--catalog", str(catalog), "--output", "gs://bucket/out", "--cutout_source=none")
    assert "pip install -e '.[gcp]'" in err
    err = error_of(capsys, "--catalog", str(catalog), "--output", str(tmp_path / "o"), "--cutout_source=coadd",
                   "--coadd_root", "gs://bucket/pdr2_wide")
    assert "pip install -e '.[gcp]'" in err


def test_bad_option_values(capsys, catalog, tmp_path):
    assert "--split_fractions" in error_of(
        capsys, "--catalog", str(catalog), "--output", str(tmp_path / "o"), "--split_fractions", "0.5,0.5", "--cutout_source=none"
    )
    assert "unknown preset" in error_of(capsys, "--preset", "nope")


# -- the command line a user mistypes ---------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, flag, suggestion",
    [
        (["run", "--split_seeed", "3"], "--split_seeed", "--split_seed"),
        (["run", "--galaxies_per_shrd", "10"], "--galaxies_per_shrd", "--galaxies_per_shard"),
        (["--runer=FnApiRunner"], "--runer", "--runner"),  # one of Beam's, misspelt
        (["demo", "--galaxy", "50"], "--galaxy", "--galaxies"),
        (["demo", "--cutout_sorce", "none"], "--cutout_sorce", "--cutout_source"),
    ],
)
def test_a_misspelt_flag_is_an_error_naming_it_and_the_closest_known_one(capsys, catalog, tmp_path, argv, flag, suggestion):
    command, rest = (argv[0], argv[1:]) if not argv[0].startswith("-") else ("run", argv)
    where = ["--output", str(tmp_path / "o")] + (["--catalog", str(catalog), "--cutout_source=none"] if command == "run" else [])
    err = error_of(capsys, command, *where, *rest)
    assert f"unknown option {flag} (did you mean {suggestion}?)" in err
    assert not (tmp_path / "o").exists(), "nothing may be built with a misspelt flag"


def test_a_flag_given_a_value_it_cannot_take_is_one_line(capsys, catalog, tmp_path):
    err = error_of(capsys, "--catalog", str(catalog), "--output", str(tmp_path / "o"), "--split_seed", "three")
    assert "--split_seed" in err and "three" in err


def test_help_lists_the_commands_and_where_beams_flags_are(capsys):
    for argv in (["--help"], ["-h"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: python -m pipeline COMMAND")
        for command in ("run", "demo", "generate-catalog", "report", "verify"):
            assert re.search(rf"^  {command}\s+\S", out, re.M), command
        assert "python -m pipeline run --help-beam" in out
    assert main(["run", "--help"]) == 0
    run_help = capsys.readouterr().out
    assert "usage: python -m pipeline [run] --catalog" in run_help and "--split_seed" in run_help and "--help-beam" in run_help
    assert "--direct_running_mode" not in run_help  # Beam's are listed apart
    assert main(["run", "--help-beam"]) == 0
    beam_help = capsys.readouterr().out
    assert "--direct_running_mode" in beam_help and "--runner" in beam_help and "--split_seed" not in beam_help
    assert main(["demo", "--help"]) == 0
    demo_help = capsys.readouterr().out
    assert "usage: python -m pipeline demo" in demo_help and "--galaxies" in demo_help


def test_no_arguments_or_an_unknown_command_say_what_there_is(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "demo" in err and "usage: python -m pipeline COMMAND" in err
    assert main(["rn", "--catalog", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown command 'rn' (did you mean run?): `python -m pipeline --help` lists the commands"


def test_overwrite_leaves_nothing_of_the_old_build_and_keeps_what_is_not_a_build(capsys, catalog, tmp_path):
    out = tmp_path / "o"
    assert main(["--catalog", str(catalog), "--output", str(out), "--cutout_source=none", "--runner=FnApiRunner"]) == 0
    # what a crashed run leaves: Beam's temporary folders, a stale shard, a partial summary
    (out / "catalog" / "beam-temp-kept-1234").mkdir()
    (out / "catalog" / "beam-temp-kept-1234" / "x.parquet").write_bytes(b"PAR1")
    (out / "galaxies" / "training").mkdir(parents=True)
    (out / "galaxies" / "training" / "part-00007-of-00009.parquet").write_bytes(b"PAR1")
    (out / "cache").mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["--catalog", str(catalog), "--output", str(out), "--cutout_source=none", "--split_seed", "4",
                 "--overwrite", "--runner=FnApiRunner"]) == 0
    assert not list(out.rglob("beam-temp*")) and not (out / "galaxies").exists()
    assert (out / "cache").is_dir() and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "summary.json").read_text())["run"]["split_seed"] == 4


def test_a_rerun_of_an_unfinished_build_leaves_nothing_of_the_earlier_run_beside_its_outputs(capsys, catalog, tmp_path):
    """A killed run leaves catalog shards of another count and Beam's temporary folders: the rerun
    (the same build, resumed) writes its outputs without them, and keeps the cutout cache."""
    import pyarrow.parquet as pq

    out = tmp_path / "o"
    build = ["--catalog", str(catalog), "--output", str(out), "--cutout_source=none", "--runner=FnApiRunner"]
    assert main(build) == 0
    kept = pq.read_table(sorted(out.glob("catalog/kept-*.parquet"))).num_rows
    info = json.loads((out / "build.json").read_text())
    del info["completed"]  # as a killed run leaves it
    (out / "build.json").write_text(json.dumps(info))
    stale = out / "catalog" / "kept-00007-of-00009.parquet"
    stale.write_bytes((sorted(out.glob("catalog/kept-*.parquet"))[0]).read_bytes())
    (out / "catalog" / "beam-temp-kept-1234").mkdir()
    (out / "catalog" / "beam-temp-kept-1234" / "x.parquet").write_bytes(b"PAR1")
    (out / "cache").mkdir()
    (out / "cache" / "entry.tar").write_bytes(b"kept")
    assert main(build) == 0
    assert not stale.exists() and not list(out.rglob("beam-temp*"))
    assert pq.read_table(sorted(out.glob("catalog/kept-*.parquet"))).num_rows == kept
    assert (out / "cache" / "entry.tar").read_bytes() == b"kept"
    assert json.loads((out / "build.json").read_text())["completed"] is True


def test_the_end_of_run_message_names_every_output_with_what_it_holds(capsys, catalog, tmp_path):
    out = tmp_path / "o"
    assert main(["--catalog", str(catalog), "--output", str(out), "--cutout_source=none", "--runner=FnApiRunner"]) == 0
    printed = capsys.readouterr().out
    listed = re.findall(r"^  (\S+)\s{2,}\S", printed.split(f"outputs in {out}:")[1], re.M)
    assert listed == ["datacard/", "catalog/", "summary.json", "build.json"]
    # and a rerun of the finished build says so, with the same list
    assert main(["--catalog", str(catalog), "--output", str(out), "--cutout_source=none", "--runner=FnApiRunner"]) == 0
    printed = capsys.readouterr().out
    assert "already holds this build, complete" in printed and "summary.json" in printed


CRASHING_RUN = """
import sys
import galaxiesml.funnel
def count_by(*args, **kwargs):
    raise ValueError("a bug in user code")
galaxiesml.funnel.count_by = count_by
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("runner", [["--runner=FnApiRunner"], ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]])
def test_a_crash_is_one_line_without_beams_traceback_unless_verbose(catalog, tmp_path, runner):
    argv = ["--catalog", str(catalog), "--output", str(tmp_path / "o"), "--cutout_source=none", "--progress_every=0", *runner]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = tmp_path / "crashing_run.py"
    script.write_text(CRASHING_RUN)
    quiet = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 1
    lines = [line for line in quiet.stderr.splitlines() if line.strip() and "apitools" not in line]
    assert len(lines) == 1, quiet.stderr
    assert lines[0].startswith("error: the build failed: ValueError: a bug in user code in step '")
    assert f"at {script}:5 (count_by)" in lines[0] and "--verbose" in lines[0]
    loud = subprocess.run([sys.executable, str(script), *argv, "--verbose"], capture_output=True, text=True, env=env, timeout=300)
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr


def test_a_multi_process_run_shows_progress_and_no_worker_logs(tmp_path):
    """Worker processes print Beam's INFO logs to the terminal unless told, and their counts do not
    reach the launcher's progress line by themselves (it was empty)."""
    from galaxiesml.synthetic_catalog import main as generate

    catalog = tmp_path / "cat.csv"
    assert generate(["--rows", "200000", "--out", str(catalog)]) == 0
    argv = ["--catalog", str(catalog), "--output", str(tmp_path / "o"), "--cutout_source=none", "--progress_every=0.2",
            "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    done = subprocess.run([sys.executable, "-m", "pipeline", *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    progress = [line for line in lines if re.match(r"\[\s*\d+ s\]", line)]
    assert progress and all(re.match(r"\[\s*\d+ s\] \w", line) for line in progress), lines
    assert any(re.search(r"read [\d,]+", line) for line in progress)
    assert lines == progress, [line for line in lines if line not in progress]  # nothing but progress


def test_the_old_local_source_flags_say_what_replaced_them(capsys, catalog, tmp_path):
    for flags in (["--cutout_source", "local"], ["--patch_root", str(tmp_path)]):
        err = error_of(capsys, "--catalog", str(catalog), "--output", str(tmp_path / "o"), *flags)
        assert "are gone: use --cutout_source coadd --coadd_root DIR" in err
    err = error_of(capsys, "--catalog", str(catalog), "--output", str(tmp_path / "o"), "--cutout_source", "coadd",
                   "--coadd_root", str(tmp_path))
    assert "holds no deepCoadd-results/ folder" in err
