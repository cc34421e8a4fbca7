"""The PyTorch dataset over a released HDF5 file, alone and behind a DataLoader with workers."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from galaxiesml.hdf5 import consolidate  # noqa: E402
from galaxiesml.reader import GalaxiesDataset  # noqa: E402
from tests.galaxy_shards import write_shards  # noqa: E402


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    shards = write_shards(root, {"training": 30}, shards=2, seed=5)
    path = root / "5x64x64_training_with_morphology.hdf5"
    consolidate(shards["training"], str(path), 64, attrs={})
    return path


def test_items_are_the_files_images_and_columns(hdf5_file):
    data = GalaxiesDataset(hdf5_file, columns=("object_id", "specz_redshift", "specz_name", "filters"))
    with h5py.File(hdf5_file, "r") as h5:
        assert len(data) == len(h5["object_id"]) == 30
        image, cols = data[4]
        assert image.dtype == torch.float32 and image.shape == (5, 64, 64)
        np.testing.assert_array_equal(image.numpy(), h5["image"][4])
        assert int(cols["object_id"]) == h5["object_id"][4]
        assert float(cols["specz_redshift"]) == h5["specz_redshift"][4]
        assert cols["specz_name"] == h5["specz_name"][4].decode()
        assert cols["filters"] == h5["filters"][4].astype(str).tolist()
    with pytest.raises(IndexError):
        data[30]
    with pytest.raises(KeyError, match="no_such_column"):
        GalaxiesDataset(hdf5_file, columns=("no_such_column",))


def test_transform_is_applied(hdf5_file):
    data = GalaxiesDataset(hdf5_file, transform=lambda image: image[:, 16:48, 16:48] * 2)
    image, _ = data[0]
    with h5py.File(hdf5_file, "r") as h5:
        np.testing.assert_array_equal(image.numpy(), h5["image"][0, :, 16:48, 16:48] * 2)


def test_dataloader_workers_read_every_galaxy_once(hdf5_file):
    data = GalaxiesDataset(hdf5_file)
    data[0]  # a handle opened in the parent must not leak into the workers
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2, shuffle=True)
    ids, total = [], 0.0
    for images, cols in loader:
        assert images.shape[1:] == (5, 64, 64)
        ids += cols["object_id"].tolist()
        total += float(images.double().sum())
    with h5py.File(hdf5_file, "r") as h5:
        assert sorted(ids) == h5["object_id"][:].tolist()
        assert total == pytest.approx(float(h5["image"][:].astype(np.float64).sum()))
