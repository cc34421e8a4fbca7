"""A PyTorch map-style dataset over one released HDF5 file (the `torch` extra).

Each item is (image, columns): the (5, S, S) float32 image as a tensor (after `transform`, when
given) and a dict of the requested tabular columns (numbers as tensors, strings as str, `filters`
as a list of str). The HDF5 file is opened lazily, once per process, so a DataLoader's forked or
spawned workers each get their own handle (h5py handles must not cross a fork). torch is imported
only when an item is read, so this module imports without it.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import h5py
import numpy as np

DEFAULT_COLUMNS: tuple[str, ...] = ("object_id", "specz_redshift")


class GalaxiesDataset:
    """Galaxies of one HDF5 file, e.g. 5x64x64_training_with_morphology.hdf5, for torch's DataLoader."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str] = DEFAULT_COLUMNS, transform: Callable | None = None):
        self.path = os.fspath(path)
        self.columns = tuple(columns)
        self.transform = transform
        with h5py.File(self.path, "r") as h5:
            self._length = h5["image"].shape[0]
            missing = [c for c in self.columns if c not in h5]
        if missing:
            raise KeyError(f"{self.path} has no columns {missing}")
        self._h5: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self._length

    def _file(self) -> h5py.File:
        """This process's handle, opened on first use (and again after a fork)."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None, "_pid": None}

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        import torch

        if not -self._length <= index < self._length:
            raise IndexError(index)
        h5 = self._file()
        image = torch.from_numpy(h5["image"][index])
        if self.transform is not None:
            image = self.transform(image)
        return image, {name: _value(h5[name][index]) for name in self.columns}

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def _value(value: Any) -> Any:
    """An HDF5 value as a DataLoader collates it: bytes -> str, arrays of bytes -> list of str,
    numbers -> 0-d tensors."""
    import torch

    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return [v.decode() for v in value.tolist()]
    return torch.as_tensor(value)
