"""Train and evaluate a photo-z baseline on a built GalaxiesML output (the paper's Appendix 11).

    python -m galaxiesml.photoz.train --dataset OUTPUT_DIR --model nn|cnn [--epochs N] [--size 64|127]
        [--batch-size B] [--seed S]

Reads OUTPUT_DIR/hdf5/5x<size>x<size>_{training,validation,testing}_with_morphology.hdf5; trains on
training with Adam and the loss of equation 1, keeps the epoch with the lowest validation loss (and
stops after --patience epochs without improvement), predicts the testing split and writes, beside the
data card, OUTPUT_DIR/photoz/<model>/: metrics.md and metrics.csv (overall and per z_spec bin),
predictions.csv, history.csv, metrics_by_redshift.png (Figure 6), photoz_vs_specz.png, model.pt and
run.json; and OUTPUT_DIR/photoz/metrics_by_redshift.png with every model trained there so far.
The same seed gives the same model and numbers on the same CPU and thread count.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np
import torch

from galaxiesml.hdf5 import SIZES, hdf5_name
from galaxiesml.photoz.metrics import DEFAULT_BINS, loss, metrics_table, read_csv, to_markdown, write_csv
from galaxiesml.photoz.models import MODELS, build_model, photoz_loss
from galaxiesml.photoz.plots import plot_metrics_by_bin, plot_photoz_vs_specz
from galaxiesml.reader import GalaxiesDataset
from galaxiesml.schema import BANDS

HDF5_DIR = "hdf5"
PHOTOZ_DIR = "photoz"
MAG_COLUMNS: tuple[str, ...] = tuple(f"{b}_cmodel_mag" for b in BANDS)
TARGET = "specz_redshift"
#: Training images sampled to fit the pixel scaling.
SCALING_SAMPLE = 512


@dataclass(frozen=True)
class TrainConfig:
    """One run's settings; defaults are the paper's (200 epochs, batch 256, Adam at 1e-4, 127 px)."""

    model: str
    size: int = 127
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-4
    patience: int | None = 20
    seed: int = 0
    width: int = 32
    workers: int = 0
    device: str | None = None
    bins: tuple[float, ...] = field(default=DEFAULT_BINS)


def split_path(dataset: str | os.PathLike, size: int, split: str) -> Path:
    """Where the built dataset keeps one split's HDF5 file."""
    return Path(dataset) / HDF5_DIR / hdf5_name(size, split)


def read_columns(path: str | os.PathLike, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Whole tabular columns of a released HDF5 file (a few bytes a galaxy; no pixels read)."""
    with h5py.File(path, "r") as h5:
        missing = [n for n in names if n not in h5]
        if missing:
            raise KeyError(f"{path} has no columns {missing}")
        return {n: h5[n][:] for n in names}


class SplitBatches(torch.utils.data.Dataset):
    """One split as batches: item `indices` -> (magnitudes (B, 5) float32, images (B, 5, S, S) float32
    or an empty tensor when `with_images` is false, z_spec (B,) float32). Magnitudes and redshifts are
    held in memory; images are read through galaxiesml.reader.GalaxiesDataset as they are needed."""

    def __init__(self, path: str | os.PathLike, with_images: bool):
        cols = read_columns(path, (*MAG_COLUMNS, TARGET, "object_id"))
        self.mags = np.stack([cols[c] for c in MAG_COLUMNS], axis=1).astype(np.float32)
        self.z = cols[TARGET].astype(np.float64)
        self.object_id = cols["object_id"]
        bad = ~(np.isfinite(self.mags).all(axis=1) & np.isfinite(self.z))
        if bad.any():
            raise ValueError(f"{path}: {int(bad.sum())} galaxies with a non-finite magnitude or redshift")
        self.images = GalaxiesDataset(path, columns=()) if with_images else None

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        images = torch.stack([self.images[int(i)][0] for i in idx]) if self.images is not None else torch.empty(0)
        return torch.from_numpy(self.mags[idx]), images, torch.from_numpy(self.z[idx].astype(np.float32))

    def image_sample(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        """Up to n images at random, (n, 5, S, S), for the pixel scaling; None without images."""
        if self.images is None:
            return None
        idx = np.sort(rng.choice(len(self), size=min(n, len(self)), replace=False))
        return self[idx][1].numpy()


def loader(data: SplitBatches, batch_size: int, shuffle: bool, seed: int, workers: int) -> torch.utils.data.DataLoader:
    """Batches of `data` (shuffled reproducibly from `seed` when asked)."""
    sampler = (torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if shuffle
               else torch.utils.data.SequentialSampler(data))
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False)
    return torch.utils.data.DataLoader(data, sampler=batches, batch_size=None, num_workers=workers,
                                       persistent_workers=workers > 0)


def predict(model: torch.nn.Module, batches: torch.utils.data.DataLoader, device: torch.device) -> np.ndarray:
    """z_phot for every galaxy of `batches`, in order, float64."""
    model.eval()
    out = []
    with torch.no_grad():
        for mags, images, _ in batches:
            out.append(model(mags.to(device), images.to(device) if model.uses_images else None).double().cpu())
    return torch.cat(out).numpy() if out else np.empty(0)


def fit(model: torch.nn.Module, train: torch.utils.data.DataLoader, val: torch.utils.data.DataLoader, val_z: np.ndarray,
        epochs: int, lr: float, patience: int | None, device: torch.device,
        log: Callable[[str], None] = print) -> list[dict[str, float]]:
    """Adam on equation 1; after each epoch the validation loss; the model ends with the weights of the
    epoch of lowest validation loss. Stops once `patience` epochs pass without a new best. Returns the
    history, one row per epoch (epoch, train_loss: the epoch's mean batch loss, val_loss, seconds)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict[str, float]] = []
    best, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        total, n = 0.0, 0
        for mags, images, z in train:
            z = z.to(device)
            batch_loss = photoz_loss(z, model(mags.to(device), images.to(device) if model.uses_images else None))
            opt.zero_grad()
            batch_loss.backward()
            opt.step()
            total += batch_loss.item() * len(z)
            n += len(z)
        val_loss = loss(val_z, predict(model, val, device))
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), "val_loss": val_loss,
                        "seconds": time.perf_counter() - start})
        log(f"epoch {epoch}: train loss {total / max(n, 1):.5f}, validation loss {val_loss:.5f}")
        if val_loss < best:
            best, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
        elif patience is not None and epoch - best_epoch >= patience:
            log(f"no better validation loss for {patience} epochs; stopping")
            break
    model.load_state_dict(best_state)
    return history


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs from one seed (weights' initialisation and shuffling)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_rows(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def run(dataset: str | os.PathLike, config: TrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train config.model on `dataset`'s training split, select on validation, evaluate on testing, and
    write the outputs under <dataset>/photoz/<model>/. Returns run.json's contents."""
    if config.model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, not {config.model!r}")
    paths = {s: split_path(dataset, config.size, s) for s in ("training", "validation", "testing")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"built HDF5 files missing (build the dataset first): {missing}")
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":  # deterministic kernels where torch has them (CPU ones already are)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    seed_everything(config.seed)
    model = build_model(config.model, config.size, config.width)
    data = {s: SplitBatches(p, model.uses_images) for s, p in paths.items()}
    model.scaling.fit(data["training"].mags, data["training"].image_sample(SCALING_SAMPLE, np.random.default_rng(config.seed)))
    model.to(device)
    batches = {s: loader(d, config.batch_size, s == "training", config.seed, config.workers) for s, d in data.items()}
    log(f"{config.model}: {len(data['training'])} training, {len(data['validation'])} validation, "
        f"{len(data['testing'])} testing galaxies on {device}")
    start = time.perf_counter()
    history = fit(model, batches["training"], batches["validation"], data["validation"].z, config.epochs, config.lr,
                  config.patience, device, log)
    train_seconds = time.perf_counter() - start
    test = data["testing"]
    z_phot = predict(model, batches["testing"], device)
    rows = metrics_table(test.z, z_phot, config.bins)

    out = Path(dataset) / PHOTOZ_DIR / config.model
    out.mkdir(parents=True, exist_ok=True)
    best = min(history, key=lambda h: h["val_loss"])
    summary = {
        "model": config.model, "dataset": str(dataset), "config": asdict(config), "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "n": {s: len(d) for s, d in data.items()},
        "epochs_run": len(history), "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
        "train_seconds": train_seconds, "parameters": sum(p.numel() for p in model.parameters()),
        "testing": rows[0],
    }
    write_outputs(out, config, summary, test, z_phot, rows, history, model)
    log(f"wrote {out}: " + ", ".join(f"{k} {rows[0][k]:.4g}" for k in ("bias", "scatter", "outlier_fraction", "loss")))
    return summary


def write_outputs(out: Path, config: TrainConfig, summary: dict[str, Any], test: SplitBatches, z_phot: np.ndarray,
                  rows: list[dict[str, Any]], history: list[dict[str, float]], model: torch.nn.Module) -> None:
    """A run's files under `out` (see the module docstring), and the Figure 6 of every model in out's parent."""
    write_csv(rows, out / "metrics.csv")
    (out / "metrics.md").write_text(
        f"# Photo-z {config.model.upper()} on the testing split\n\n"
        f"{len(test)} galaxies, {config.size} px images, best of {len(history)} epochs at epoch {summary['best_epoch']} "
        f"(validation loss {summary['best_val_loss']:.5f}), seed {config.seed}, {summary['device']}.\n"
        "Metrics as the paper's Appendix 11 defines them (see galaxiesml/photoz/metrics.py): bias = mean dz/(1+z_spec), "
        "scatter = 1.48 MAD of dz, scatter_norm = 1.48 MAD of dz/(1+z_spec), rms of dz/(1+z_spec), "
        "outlier_fraction = |dz|/(1+z_spec) > 0.15, mse of dz, loss = mean of eq. 1; bins in z_spec.\n\n"
        + to_markdown(rows))
    _write_rows([{"object_id": int(i), "specz_redshift": float(s), "photoz": float(p)}
                 for i, s, p in zip(test.object_id, test.z, z_phot)], out / "predictions.csv")
    _write_rows(history, out / "history.csv")
    torch.save({"config": asdict(config), "state_dict": model.state_dict()}, out / "model.pt")
    (out / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_metrics_by_bin({config.model: rows}, out / "metrics_by_redshift.png")
    plot_photoz_vs_specz(test.z, z_phot, out / "photoz_vs_specz.png", title=f"{config.model.upper()}, testing split")
    tables = {m: read_csv(p) for m in MODELS if (p := out.parent / m / "metrics.csv").exists()}
    plot_metrics_by_bin(tables, out.parent / "metrics_by_redshift.png")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m galaxiesml.photoz.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a built GalaxiesML output directory (with hdf5/)")
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--size", type=int, choices=SIZES, default=TrainConfig.size, help="which image files to read")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="Adam's learning rate")
    p.add_argument("--patience", type=int, default=TrainConfig.patience,
                   help="stop after this many epochs without a better validation loss (0: never)")
    p.add_argument("--width", type=int, default=TrainConfig.width, help="channels of the CNN's first conv layer")
    p.add_argument("--workers", type=int, default=TrainConfig.workers, help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--bins", default=",".join(f"{b:g}" for b in DEFAULT_BINS), help="z_spec bin edges, comma separated")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # for deterministic cuBLAS, before CUDA starts
    if a.threads:
        torch.set_num_threads(a.threads)
    config = TrainConfig(model=a.model, size=a.size, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                         patience=a.patience or None, seed=a.seed, width=a.width, workers=a.workers, device=a.device,
                         bins=tuple(float(b) for b in a.bins.split(",")))
    try:
        run(a.dataset, config)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
