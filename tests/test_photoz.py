"""Photo-z baselines (paper Appendix 11): the metrics against hand computations, the loss of equation 1
in numpy and torch, and short NN and CNN runs on a tiny synthetic HDF5 dataset written here (no
pipeline). The torch tests skip, with the reason, only where torch does not import."""
from __future__ import annotations

import csv
import json
import math

import h5py
import numpy as np
import pytest

from galaxiesml.hdf5 import hdf5_name
from galaxiesml.photoz import metrics as m

try:
    import torch
except ImportError as e:  # the `torch` extra is not installed
    torch, TORCH_ERROR = None, str(e)
else:
    TORCH_ERROR = ""
needs_torch = pytest.mark.skipif(torch is None, reason=f"torch not importable ({TORCH_ERROR}); pip install '.[torch]'")

# Four galaxies: dz = (0.1, 0.2, -0.6, 0), 1 + z_spec = (1, 2, 2, 4), dz / (1 + z_spec) = (0.1, 0.1, -0.3, 0).
Z_SPEC = np.array([0.0, 1.0, 1.0, 3.0])
Z_PHOT = np.array([0.1, 1.2, 0.4, 3.0])
# Eq. 1 with 0.15 (1 + z_phot): x = 0.1 / 0.165 = 20/33, 0.2 / 0.33 = 20/33, -0.6 / 0.21 = -20/7, 0;
# L = x^2 / (1 + x^2) = 400/1489, 400/1489, 400/449, 0.
LOSS_PHOT = (400 / 1489 + 400 / 1489 + 400 / 449 + 0) / 4
# With 0.15 (1 + z_spec) (Tanaka et al.): x = 2/3, 2/3, -2, 0; L = 4/13, 4/13, 4/5, 0.
LOSS_SPEC = (4 / 13 + 4 / 13 + 4 / 5 + 0) / 4


def test_metrics_match_hand_computation():
    assert m.bias(Z_SPEC, Z_PHOT) == pytest.approx((0.1 + 0.1 - 0.3 + 0) / 4)
    assert m.rms(Z_SPEC, Z_PHOT) == pytest.approx(math.sqrt((0.01 + 0.01 + 0.09 + 0) / 4))
    assert m.outlier_fraction(Z_SPEC, Z_PHOT) == 0.25  # only |-0.3| > 0.15
    assert m.mse(Z_SPEC, Z_PHOT) == pytest.approx((0.01 + 0.04 + 0.36 + 0) / 4)
    # Eq. 4 on dz: median(dz) = (0 + 0.1) / 2 = 0.05; |dz - 0.05| = (0.05, 0.15, 0.65, 0.05), median 0.1.
    assert m.scatter(Z_SPEC, Z_PHOT) == pytest.approx(1.48 * 0.1)
    # The same on dz / (1 + z): median 0.05; deviations (0.05, 0.05, 0.35, 0.05), median 0.05.
    assert m.scatter_norm(Z_SPEC, Z_PHOT) == pytest.approx(1.48 * 0.05)
    assert m.loss(Z_SPEC, Z_PHOT) == pytest.approx(LOSS_PHOT)
    assert m.loss(Z_SPEC, Z_PHOT, relative_to="spec") == pytest.approx(LOSS_SPEC)
    assert m.metrics(Z_SPEC, Z_PHOT)["loss"] == pytest.approx(LOSS_PHOT)


def test_perfect_estimates_score_zero_and_far_outliers_cost_at_most_one():
    z = np.array([0.02, 0.5, 1.5, 3.9])
    assert all(v == 0 for v in m.metrics(z, z).values())
    terms = m.loss_terms(z, z + 1e6)
    assert np.all((terms > 0.9) & (terms < 1)) and m.outlier_fraction(z, z + 1e6) == 1.0


def test_outlier_threshold_is_strict():
    # |dz| / (1 + z_spec) exactly 0.15 is not an outlier (eq. 5 is ">"); just above is.
    z_spec = np.array([1.0, 1.0])
    assert m.outlier_fraction(z_spec, z_spec + np.array([0.25, 0.3 + 1e-9])) == 0.5


def test_metrics_table_rows_per_bin():
    rows = m.metrics_table(Z_SPEC, Z_PHOT, bins=(0.0, 0.5, 0.9, 2.0, 3.0))
    assert [r["bin"] for r in rows] == ["all", "0-0.5", "0.5-0.9", "0.9-2", "2-3"]
    assert [r["n"] for r in rows] == [4, 1, 0, 2, 1]  # z = 3 falls in the last, closed bin
    assert rows[0] == {"bin": "all", "z_lo": 0.0, "z_hi": 3.0, "n": 4, **m.metrics(Z_SPEC, Z_PHOT)}
    assert rows[1]["bias"] == pytest.approx(0.1) and rows[1]["outlier_fraction"] == 0.0
    assert all(math.isnan(rows[2][k]) for k in m.METRICS)
    mid = rows[3]  # z_spec = 1, 1 with z_phot = 1.2, 0.4
    assert mid["bias"] == pytest.approx(-0.1) and mid["outlier_fraction"] == 0.5
    assert mid["mse"] == pytest.approx((0.04 + 0.36) / 2)
    assert mid["loss"] == pytest.approx((400 / 1489 + 400 / 449) / 2)
    assert rows[4]["bias"] == 0.0 and rows[4]["loss"] == 0.0
    # Galaxies outside the edges count only in "all".
    assert [r["n"] for r in m.metrics_table(Z_SPEC, Z_PHOT, bins=(0.5, 2.0))] == [4, 2]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="length"):
        m.bias([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="increasing"):
        m.metrics_table(Z_SPEC, Z_PHOT, bins=(1.0, 0.5))


def test_table_writes_markdown_and_csv_that_read_back(tmp_path):
    rows = m.metrics_table(Z_SPEC, Z_PHOT, bins=(0.0, 0.5, 0.9, 2.0, 3.0))
    m.write_csv(rows, tmp_path / "t.csv")
    back = m.read_csv(tmp_path / "t.csv")
    assert len(back) == len(rows)
    for got, want in zip(back, rows):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == want[k] or (isinstance(want[k], float) and math.isnan(want[k]) and math.isnan(got[k]))
    md = m.to_markdown(rows).splitlines()
    assert md[0] == "| " + " | ".join(m.COLUMNS) + " |" and len(md) == 2 + len(rows)
    assert md[2].startswith("| all | 0 | 3 | 4 | -0.025 | 0.148 | 0.074 |")
    assert "| 0.5-0.9 | 0.5 | 0.9 | 0 |  |" in md[4]


def test_figure6_and_photoz_plots_are_written(tmp_path):
    from galaxiesml.photoz.plots import plot_metrics_by_bin, plot_photoz_vs_specz

    rows = m.metrics_table(Z_SPEC, Z_PHOT, bins=(0.0, 0.5, 0.9, 2.0, 3.0))
    plot_metrics_by_bin({"nn": rows, "cnn": rows}, tmp_path / "f6.png")
    plot_photoz_vs_specz(Z_SPEC, Z_PHOT, tmp_path / "zz.png")
    for name in ("f6.png", "zz.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- torch ---------------------------------------------------------------------------------------
@needs_torch
def test_torch_loss_is_equation_1_and_differentiable():
    from galaxiesml.photoz.models import photoz_loss

    z_phot = torch.tensor(Z_PHOT, requires_grad=True)
    value = photoz_loss(torch.tensor(Z_SPEC), z_phot)
    assert value.item() == pytest.approx(LOSS_PHOT)
    value.backward()
    assert torch.isfinite(z_phot.grad).all() and z_phot.grad[3] == 0  # a perfect estimate has no gradient
    assert z_phot.grad[0] > 0 and z_phot.grad[2] < 0  # pushes each estimate towards z_spec


@needs_torch
def test_models_give_one_positive_redshift_per_galaxy():
    from galaxiesml.photoz.models import HybridCNN, build_model

    mags = torch.randn(3, 5) + 22
    images = torch.randn(3, 5, 64, 64)
    images[0, 1, 5, 5] = float("nan")  # a missing pixel must not poison the output
    for kind in ("nn", "cnn"):
        z = build_model(kind, 64, width=4)(mags, images)
        assert z.shape == (3,) and torch.all(torch.isfinite(z) & (z > 0))
    assert HybridCNN(127, width=4)(mags, torch.randn(3, 5, 127, 127)).shape == (3,)
    with pytest.raises(ValueError, match="at least 32"):
        HybridCNN(16)


SIZE = 64
N = {"training": 384, "validation": 128, "testing": 128}
#: Colour slopes d(mag_band - mag_i)/dz of the synthetic galaxies, g r i z y.
SLOPES = np.array([1.2, 0.6, 0.0, -0.3, -0.5])


def write_tiny_split(path, n: int, rng: np.random.Generator, first_id: int) -> None:
    """A released-layout HDF5 file of n synthetic galaxies whose colours, brightness and size follow z:
    `image` (n, 5, 64, 64) float32, the five cmodel magnitudes, specz_redshift, object_id."""
    z = rng.uniform(0.05, 2.0, n)
    mag_i = 19.5 + 3.0 * np.log1p(z) + rng.normal(0, 0.3, n)
    mags = mag_i[:, None] + SLOPES[None, :] * z[:, None] + rng.normal(0, 0.05, (n, 5))
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    sigma = 6.0 / (1 + z)
    profile = np.exp(-(xx**2 + yy**2)[None] / (2 * sigma[:, None, None] ** 2)) / (2 * np.pi * sigma[:, None, None] ** 2)
    flux = 10 ** (-0.4 * (mags - 27.0))
    images = flux[:, :, None, None] * profile[:, None] + rng.normal(0, 0.5, (n, 5, SIZE, SIZE))
    with h5py.File(path, "w") as h5:
        h5["image"] = images.astype(np.float32)
        h5["specz_redshift"] = z
        h5["object_id"] = np.arange(first_id, first_id + n, dtype=np.int64)
        for band, column in zip("grizy", mags.T):
            h5[f"{band}_cmodel_mag"] = column


@pytest.fixture
def one_thread():
    """torch on one thread: on a shared machine two threads spin on each other (and results depend on
    the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("photoz")
    (root / "hdf5").mkdir()
    rng = np.random.default_rng(11)
    first = 1
    for split, n in N.items():
        write_tiny_split(root / "hdf5" / hdf5_name(SIZE, split), n, rng, first)
        first += n
    return root


def _check_outputs(out, history, n_test):
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert min(h["val_loss"] for h in history) < history[0]["val_loss"]
    rows = m.read_csv(out / "metrics.csv")
    assert rows[0]["bin"] == "all" and rows[0]["n"] == n_test
    assert sum(r["n"] for r in rows[1:]) == n_test
    assert (out / "metrics.md").read_text().count("\n| ") == len(rows) + 1
    with open(out / "predictions.csv") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == n_test
    z_spec = np.array([float(p["specz_redshift"]) for p in preds])
    z_phot = np.array([float(p["photoz"]) for p in preds])
    assert rows[0]["loss"] == pytest.approx(m.loss(z_spec, z_phot))
    for png in ("metrics_by_redshift.png", "photoz_vs_specz.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "model.pt").exists()
    return z_spec, z_phot


@needs_torch
def test_nn_trains_evaluates_and_repeats_exactly(tiny_dataset, one_thread):
    from galaxiesml.photoz.train import TrainConfig, main, run

    args = ["--dataset", str(tiny_dataset), "--model", "nn", "--size", "64", "--epochs", "12",
            "--batch-size", "64", "--seed", "3", "--lr", "0.003"]
    assert main(args) == 0
    out = tiny_dataset / "photoz" / "nn"
    summary = json.loads((out / "run.json").read_text())
    with open(out / "history.csv") as f:
        history = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    assert len(history) == summary["epochs_run"] == 12
    z_spec, z_phot = _check_outputs(out, history, N["testing"])
    # The magnitudes carry z: the model beats guessing the training median for every galaxy.
    with h5py.File(tiny_dataset / "hdf5" / hdf5_name(SIZE, "training"), "r") as h5:
        median = float(np.median(h5["specz_redshift"][:]))
    assert m.loss(z_spec, z_phot) < 0.7 * m.loss(z_spec, np.full_like(z_spec, median))

    first = {name: (out / name).read_bytes() for name in ("predictions.csv", "metrics.csv", "history.csv")}
    run(tiny_dataset, TrainConfig(model="nn", size=64, epochs=12, batch_size=64, seed=3, lr=0.003), log=lambda s: None)
    for name, content in first.items():
        if name == "history.csv":  # the same losses; only the seconds column differs
            content, again = ([r.rsplit(",", 1)[0] for r in c.decode().splitlines()] for c in (content, (out / name).read_bytes()))
            assert again == content
        else:
            assert (out / name).read_bytes() == content, name


@needs_torch
def test_cnn_trains_on_images_and_magnitudes(tiny_dataset, one_thread):
    from galaxiesml.photoz.train import TrainConfig, run

    summary = run(tiny_dataset, TrainConfig(model="cnn", size=64, epochs=3, batch_size=64, seed=1, lr=0.003, width=4),
                  log=lambda s: None)
    out = tiny_dataset / "photoz" / "cnn"
    with open(out / "history.csv") as f:
        history = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    _check_outputs(out, history, N["testing"])
    assert summary["n"] == N and summary["device"] == "cpu"
    assert (tiny_dataset / "photoz" / "metrics_by_redshift.png").stat().st_size > 1000


@needs_torch
def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    from galaxiesml.photoz.train import main

    assert main(["--dataset", str(tmp_path), "--model", "nn", "--epochs", "1"]) == 2
    assert "5x127x127_training_with_morphology.hdf5" in capsys.readouterr().err
