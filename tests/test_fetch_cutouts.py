"""The cutout stage: decoding and centring on their own, then FetchCutouts in a TestPipeline against
the das_cutout stand-in on loopback (faults, coverage, cache) and the local-patch source."""
from __future__ import annotations

import io
import tarfile

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from astropy.io import fits
from astropy.wcs import WCS

from galaxiesml.cutouts import (
    CENTRE,
    NONFINITE,
    PADDED,
    SIZE,
    CutoutError,
    central_crop,
    decode_band,
    galaxy_image,
    pack_cutouts,
    unpack_cutouts,
)
from galaxiesml.hsc.credentials import Credentials
from galaxiesml.hsc.cutout_client import CutoutRow, GalaxyCutouts, Target, list_file
from galaxiesml.schema import BANDS
from galaxiesml.sky import make_sky
from galaxiesml.standins.cutout_service import CutoutCache, CutoutServer, CutoutService, parse_list_file, prerender
from galaxiesml.standins.faults import Faults
from transforms.fetch_cutouts import FAILED, CutoutConfig, FetchCutouts, request_batches

PASSWORD = "pw-Fetch-7731"
CREDS = Credentials("bob", PASSWORD)
HALF = 1.0  # arcsec: 11 px stamps (padded to 127) keep rendering 2,000 galaxies cheap


def fits_cutout(data: np.ndarray, crval_pix: tuple[float, float], ra=150.0, dec=2.0) -> bytes:
    """A cutout FITS file like the service's: empty primary HDU, big-endian image in HDU1 whose
    WCS puts (ra, dec) at zero-based pixel `crval_pix`."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [crval_pix[0] + 1, crval_pix[1] + 1]
    w.wcs.cdelt = [-0.168 / 3600, 0.168 / 3600]
    hdu = fits.ImageHDU(data.astype(">f4"), header=w.to_header())
    hdu.header["EXTTYPE"] = "IMAGE"
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()


def test_off_centre_galaxy_comes_out_centred_to_the_pixel():
    data = np.zeros((119, 119), np.float32)
    data[40, 70] = 5.0  # the galaxy's pixel, off the cutout's centre
    out = decode_band(fits_cutout(data, (70.2, 39.8)), 150.0, 2.0)
    assert out["image"].dtype == np.float32 and out["image"].dtype.byteorder in "=|<"
    assert out["image"][CENTRE, CENTRE] == 5.0
    assert out["image"].shape == (SIZE, SIZE)
    # 119 px placed on 127: the grid rows the cutout did not reach are padded
    assert out["flags"][CENTRE, CENTRE] == 0
    assert out["flags"][0, CENTRE] == PADDED and out["image"][0, CENTRE] == 0


def test_galaxy_at_a_patch_edge_is_padded_and_flagged():
    data = np.arange(127 * 60, dtype=np.float32).reshape(60, 127) + 1  # cut short: 60 rows
    out = decode_band(fits_cutout(data, (63, 2)), 150.0, 2.0)  # galaxy 2 rows above the edge
    assert out["image"][CENTRE, CENTRE] == data[2, 63]
    padded = out["flags"] & PADDED > 0
    rows = slice(CENTRE - 2, CENTRE - 2 + 60)  # the 60 rows the cutout has
    assert not padded[rows].any()
    assert padded[: CENTRE - 2].all() and padded[CENTRE - 2 + 60 :].all()
    assert (out["image"][padded] == 0).all()
    nan = data.copy()
    nan[2, 63] = np.nan
    out = decode_band(fits_cutout(nan, (63, 2)), 150.0, 2.0)
    assert out["flags"][CENTRE, CENTRE] == NONFINITE and out["image"][CENTRE, CENTRE] == 0


def test_bad_cutouts_raise_with_a_reason():
    with pytest.raises(CutoutError) as e:
        decode_band(b"SIMPLE  = garbage", 150.0, 2.0)
    assert e.value.reason == "corrupt_fits"
    with pytest.raises(CutoutError) as e:
        decode_band(fits_cutout(np.zeros((200, 200)), (100, 100)), 150.0, 2.0)
    assert e.value.reason == "wrong_size"
    with pytest.raises(CutoutError) as e:
        decode_band(fits_cutout(np.zeros((20, 20)), (100, 100)), 150.0, 2.0)
    assert e.value.reason == "off_cutout"


def test_bands_stack_in_order_and_missing_bands_name_themselves():
    g = GalaxyCutouts(1, 150.0, 2.0)
    for k, band in enumerate(reversed(BANDS)):  # arrive in any order
        g.cutouts[band] = fits_cutout(np.full((30, 30), float(BANDS.index(band))), (15, 15))
        g.filters[band] = f"HSC-{band.upper()}"
    img = galaxy_image(g)
    assert img.image.shape == (5, SIZE, SIZE)
    assert [img.image[i, CENTRE, CENTRE] for i in range(5)] == [0, 1, 2, 3, 4]
    assert img.filters == ("HSC-G", "HSC-R", "HSC-I", "HSC-Z", "HSC-Y")
    crop = central_crop(img.image)
    assert crop.shape == (5, 64, 64) and crop[2, 32, 32] == 2
    back = unpack_cutouts(pack_cutouts(g), Target(1, 150.0, 2.0))
    assert back.cutouts == g.cutouts and back.filters == g.filters and back.missing == []
    del g.cutouts["z"]
    g.missing.append("z")
    with pytest.raises(CutoutError, match="no z coverage"):
        galaxy_image(g)
    back = unpack_cutouts(pack_cutouts(g), Target(1, 150.0, 2.0))
    assert back.missing == ["z"] and "z" not in back.cutouts  # "no coverage" is remembered too


def test_a_cut_short_cache_entry_is_refused_not_read_as_fewer_bands():
    g = GalaxyCutouts(1, 150.0, 2.0)
    for band in BANDS:
        g.cutouts[band] = fits_cutout(np.zeros((30, 30)), (15, 15))
    whole = pack_cutouts(g)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        starts = [m.offset for m in tar.getmembers()]
    assert len(starts) == 6
    # cut at every member boundary (tarfile reads those without complaint) and inside members
    for end in starts[1:] + [starts[2] + 700, starts[-1] + 100]:
        with pytest.raises(CutoutError, match="cache entry") as err:
            unpack_cutouts(whole[:end], Target(1, 150.0, 2.0))
        assert err.value.reason == "bad_cache_entry"


def test_request_batches_stay_under_the_row_limit_in_even_shares():
    table = pa.table({"object_id": list(range(450))})
    batches = list(request_batches(table))
    assert [len(b) for b in batches] == [150, 150, 150] and 5 * 150 <= 990
    assert [r["object_id"] for b in batches for r in b.to_pylist()] == list(range(450))
    assert [len(b) for b in request_batches(pa.table({"object_id": list(range(397))}))] == [132, 132, 133]
    assert [len(b) for b in request_batches(pa.table({"object_id": list(range(198))}))] == [198]
    assert list(request_batches(pa.table({"object_id": pa.array([], pa.int64())}))) == []


# --------------------------------------------------------------------------- the stage

@pytest.fixture(scope="module")
def sky():
    return make_sky(2000, seed=21, patch_px=600, empty_share=0.15, band_gap_share=0.05)


@pytest.fixture(scope="module")
def kept(sky):
    """The sky's galaxies as kept catalog rows (one per galaxy)."""
    truth = sky[0].truth.filter(pa.compute.equal(sky[0].truth.column("kind"), "galaxy"))
    n = truth.num_rows
    return pa.table(
        {
            "object_id": truth.column("object_id"),
            "ra": truth.column("ra"),
            "dec": truth.column("dec"),
            "specz_name": pa.array([f"s{i}" for i in range(n)]),
            "source": pa.array(["cat.csv"] * n),
            "line": pa.array(range(2, n + 2), pa.int64()),
            "split": pa.array(["training"] * n),
        }
    )


@pytest.fixture(scope="module")
def render_cache(tmp_path_factory, sky, kept):
    """The sky's cutouts rendered ahead, in two processes (the stand-in then serves them cheaply),
    in every filter the client may ask for, including the HSC-R2 / HSC-I2 fallbacks."""
    cache = CutoutCache(tmp_path_factory.mktemp("rendered"))
    filters = ["HSC-G", "HSC-R", "HSC-I", "HSC-Z", "HSC-Y", "HSC-R2", "HSC-I2"]
    rows = [
        CutoutRow(oid, ra, dec, f, HALF)
        for oid, ra, dec in zip(*(kept.column(c).to_pylist() for c in ("object_id", "ra", "dec")))
        for f in filters
    ]
    prerender(sky[0], [r.key for r in parse_list_file(list_file(rows), max_rows=len(rows))], cache, workers=2)
    return cache


_COLLECTED: dict[str, list] = {}


def _collect(value, key: str) -> None:
    """Keep a pipeline output in this process (FnApiRunner runs the DoFns in-process)."""
    _COLLECTED.setdefault(key, []).append(value)


def run_stage(kept: pa.Table, config: CutoutConfig, options) -> tuple[dict, list]:
    _COLLECTED.clear()
    with TestPipeline(options=options) as p:
        out = p | beam.Create([kept]) | FetchCutouts(config)
        galaxies = out.galaxies | "g" >> beam.Map(lambda r: (r["row"]["object_id"], r["image"], r["flags"]))
        galaxies | "collect g" >> beam.Map(_collect, "g")
        out[FAILED] | "collect f" >> beam.Map(_collect, "f")
    return {oid: (img, flags) for oid, img, flags in _COLLECTED.get("g", [])}, _COLLECTED.get("f", [])


def covered_ids(sky, kept) -> set[int]:
    """Galaxies the sky has data for in every band (r and i may come from R2 / I2)."""
    out = set()
    for oid, ra, dec in zip(*(kept.column(c).to_pylist() for c in ("object_id", "ra", "dec"))):
        ok = True
        for band in BANDS:
            filters = [f"HSC-{band.upper()}"] + ([f"HSC-{band.upper()}2"] if band in "ri" else [])
            if all(sky[0].cutout_box(f, ra, dec, HALF) is None for f in filters):
                ok = False
        if ok:
            out.add(oid)
    return out


def test_stage_retrieves_every_covered_galaxy_through_faults_then_uses_the_cache(
    sky, kept, render_cache, tmp_path, monkeypatch, fnapi_options
):
    monkeypatch.setenv("HSC_SSP_CAS_USER", CREDS.user)
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", PASSWORD)
    faults = Faults.spread(0.2, seed=5, slow_seconds=0.05)
    service = CutoutService(sky[0], CREDS, faults, cache=render_cache)
    with CutoutServer(service) as srv:
        config = CutoutConfig(
            url=srv.url, half_width=HALF, cache=str(tmp_path / "cache"), backoff_s=0.001, max_retries=12,
            galaxies_per_request=25,
        )
        galaxies, failed = run_stage(kept, config, fnapi_options)
        assert sum(service.faults.counts.values()) > 0  # faults really happened
        covered = covered_ids(sky, kept)
        assert 0 < len(covered) < kept.num_rows  # the sky has gaps
        assert set(galaxies) == covered
        assert {f["object_id"] for f in failed} == set(kept.column("object_id").to_pylist()) - covered
        assert {f["reason"] for f in failed} == {"no_coverage"}
        assert all(f["stage"] == "cutout" and f["line"] >= 2 for f in failed)
        for img, flags in galaxies.values():
            assert img.shape == (5, SIZE, SIZE) and img.dtype == np.float32
            assert (flags[:, CENTRE, CENTRE] == 0).all()  # the galaxy's own pixel is real data

        before = service.stats["requests"]
        again, failed_again = run_stage(kept, config, fnapi_options)
        assert service.stats["requests"] == before  # the cache answers everything: no HTTP request at all
        assert set(again) == covered
        assert all(np.array_equal(again[k][0], galaxies[k][0]) for k in covered)
        assert sorted(f["object_id"] for f in failed_again) == sorted(f["object_id"] for f in failed)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], 2),
        (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 1),
        (["--direct_running_mode=multi_processing", "--direct_num_workers=4"], 1),
        (["--direct_running_mode=multi_processing", "--direct_num_workers=2", "--max_streams=2"], 2),
        (["--max_streams=1"], 1),
    ],
)
def test_default_stream_limit_shares_the_account_among_direct_workers(flags, expected):
    from pipeline.options import GalaxiesMLOptions, cutout_config

    opts = GalaxiesMLOptions(["--catalog", "c.csv", "--output", "out", *flags])
    assert cutout_config(opts).max_streams == expected


@pytest.mark.parametrize("max_streams", [1, 2])
def test_a_worker_holds_at_most_max_streams_plus_one_batches(max_streams, monkeypatch):
    """However long the bundle and however slow the stages downstream, the fetch DoFn works on
    max_streams batches while the records of one go downstream, never more (each batch is ~64 MB of
    images at 198 galaxies), and every record comes out."""
    import threading
    import time

    from transforms.fetch_cutouts import _FetchBatch

    lock, held, most = threading.Lock(), set(), [0]

    class Recording(_FetchBatch):
        def _work(self, table):
            batch = table.column("batch")[0].as_py()
            with lock:
                held.add(batch)
                most[0] = max(most[0], len(held))
            time.sleep(0.005)  # the request
            return [{"batch": batch, "k": k, "last": k == table.num_rows - 1} for k in range(table.num_rows)], {}

    monkeypatch.setenv("HSC_SSP_CAS_USER", CREDS.user)
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", PASSWORD)
    fn = Recording(CutoutConfig(max_streams=max_streams))
    fn.setup()
    fn.start_bundle()
    seen = []

    def consume(outputs):
        for out in outputs:
            value = getattr(out, "value", out)
            seen.append((value["batch"], value["k"]))
            time.sleep(0.004)  # downstream (morphology) is slower than fetching
            if value["last"]:
                with lock:
                    held.discard(value["batch"])

    try:
        for batch in range(12):
            consume(fn.process(pa.table({"batch": [batch] * 5})))
        consume(fn.finish_bundle())
    finally:
        fn.teardown()
    assert sorted(seen) == [(b, k) for b in range(12) for k in range(5)]
    assert most[0] == max_streams + 1
