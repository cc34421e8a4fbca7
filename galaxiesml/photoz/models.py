"""The paper's two photo-z baselines (Appendix 11) in PyTorch: an NN on the five cmodel magnitudes and
the hybrid CNN (a convolutional branch on the 5-band image and a dense branch on the magnitudes,
joined by dense layers), both trained with the loss of equation 1.

What the paper fixes is kept: 7 convolutional layers with 3 x 4 kernels and 5 pooling layers between
them, a 6-layer dense branch on the magnitudes, three fully connected layers after the join, Adam.
What it leaves open is chosen here and named in the constants below: the widths, ReLU, 2 x 2 max
pooling, and a softplus on the output, so z_phot > 0 and equation 1's 1 + z_phot never reaches 0.
Inputs are scaled inside the model (InputScaling, fitted on the training split and saved with the
weights): magnitudes standardised, pixels asinh-stretched by each band's robust noise level.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from galaxiesml.photoz.metrics import loss_terms, nmad

N_BANDS = 5
#: The dense branch on the magnitudes: 6 dense layers (the NN is this branch plus the head).
PHOTOMETRY_LAYERS: tuple[int, ...] = (64, 128, 256, 256, 128, 64)
#: After the join: two hidden layers and the output, the paper's three fully connected layers.
HEAD_LAYERS: tuple[int, ...] = (256, 64)
#: Conv channels as multiples of `width`; a 2 x 2 max pool follows the convs at POOL_AFTER (5 pools).
CONV_MULTIPLES: tuple[int, ...] = (1, 2, 2, 4, 4, 4, 4)
POOL_AFTER: frozenset[int] = frozenset({0, 1, 2, 4, 6})
KERNEL = (3, 4)
#: (left, right, top, bottom) zeros keeping the size through a 3 x 4 kernel, as padding="same" would.
SAME_PADDING = (1, 2, 1, 1)
#: Image side below which 5 poolings leave nothing.
MIN_SIZE = 2 ** len(POOL_AFTER)


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear + ReLU between each consecutive pair of `sizes`."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class InputScaling(nn.Module):
    """Fixed input scaling kept with the weights: (mag - mean) / std per band, and
    asinh(pixel / scale) per band with NaN pixels set to 0 (the sky)."""

    def __init__(self, n_bands: int = N_BANDS):
        super().__init__()
        self.register_buffer("mag_mean", torch.zeros(n_bands))
        self.register_buffer("mag_std", torch.ones(n_bands))
        self.register_buffer("pixel_scale", torch.ones(n_bands))

    def fit(self, magnitudes: np.ndarray, images: np.ndarray | None = None) -> "InputScaling":
        """Statistics of training galaxies: magnitudes (N, B); images (n, B, H, W), a sample."""
        std = magnitudes.std(axis=0)
        self.mag_mean.copy_(torch.as_tensor(magnitudes.mean(axis=0)))
        self.mag_std.copy_(torch.as_tensor(np.where(std > 0, std, 1.0)))
        if images is not None:
            scales = [nmad(band[np.isfinite(band)]) for band in np.moveaxis(images, 1, 0)]
            self.pixel_scale.copy_(torch.as_tensor([s if s > 0 else 1.0 for s in scales]))
        return self

    def magnitudes(self, mags: torch.Tensor) -> torch.Tensor:
        return (mags - self.mag_mean) / self.mag_std

    def images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.asinh(torch.nan_to_num(images, nan=0.0) / self.pixel_scale[:, None, None])


class Head(nn.Sequential):
    """The fully connected layers after the join, ending in softplus: features -> z_phot > 0."""

    def __init__(self, n_in: int):
        super().__init__(mlp((n_in, *HEAD_LAYERS)), nn.Linear(HEAD_LAYERS[-1], 1), nn.Softplus())


class PhotometryNN(nn.Module):
    """The NN baseline: the dense branch on the five magnitudes, then the head."""

    uses_images = False

    def __init__(self, n_bands: int = N_BANDS):
        super().__init__()
        self.scaling = InputScaling(n_bands)
        self.photometry = mlp((n_bands, *PHOTOMETRY_LAYERS))
        self.head = Head(PHOTOMETRY_LAYERS[-1])

    def forward(self, mags: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_bands) magnitudes -> (B,) z_phot; images are ignored."""
        return self.head(self.photometry(self.scaling.magnitudes(mags))).squeeze(-1)


class HybridCNN(nn.Module):
    """The paper's hybrid CNN: conv branch on the (B, 5, size, size) image and the dense branch on the
    magnitudes, concatenated, then the head."""

    uses_images = True

    def __init__(self, size: int, n_bands: int = N_BANDS, width: int = 32):
        super().__init__()
        if size < MIN_SIZE:
            raise ValueError(f"images must be at least {MIN_SIZE} pixels across for {len(POOL_AFTER)} poolings, not {size}")
        self.scaling = InputScaling(n_bands)
        layers: list[nn.Module] = []
        c_in = n_bands
        for k, multiple in enumerate(CONV_MULTIPLES):
            layers += [nn.ZeroPad2d(SAME_PADDING), nn.Conv2d(c_in, width * multiple, KERNEL), nn.ReLU()]
            if k in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            c_in = width * multiple
        self.conv = nn.Sequential(*layers, nn.Flatten())
        n_conv = c_in * (size // MIN_SIZE) ** 2
        self.photometry = mlp((n_bands, *PHOTOMETRY_LAYERS))
        self.head = Head(n_conv + PHOTOMETRY_LAYERS[-1])

    def forward(self, mags: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_bands) magnitudes and (B, n_bands, size, size) images -> (B,) z_phot."""
        if images is None:
            raise ValueError("the hybrid CNN needs the images")
        joined = torch.cat([self.conv(self.scaling.images(images)), self.photometry(self.scaling.magnitudes(mags))], dim=1)
        return self.head(joined).squeeze(-1)


MODELS = ("nn", "cnn")


def build_model(kind: str, size: int, width: int = 32) -> PhotometryNN | HybridCNN:
    """"nn" or "cnn" (for `size` x `size` images, conv channels CONV_MULTIPLES x `width`)."""
    if kind == "nn":
        return PhotometryNN()
    if kind == "cnn":
        return HybridCNN(size, width=width)
    raise ValueError(f"model must be one of {MODELS}, not {kind!r}")


def photoz_loss(z_spec: torch.Tensor, z_phot: torch.Tensor) -> torch.Tensor:
    """The training loss: equation 1 averaged over the batch (the same formula the metrics report)."""
    return loss_terms(z_spec, z_phot).mean()
