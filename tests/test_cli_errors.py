"""What users get wrong gets one line saying what to do, and no traceback."""
from __future__ import annotations

import builtins

import pytest

from pipeline.cli import main
from tests.catalog_rows import HEADER, csv_line, row
from tests.conftest import hsc_csv


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


def test_bad_option_values(capsys, catalog, tmp_path):
    assert "--split_fractions" in error_of(
        capsys, "--catalog", str(catalog), "--output", str(tmp_path / "o"), "--split_fractions", "0.5,0.5", "--cutout_source=none"
    )
    assert "unknown preset" in error_of(capsys, "--preset", "nope")
