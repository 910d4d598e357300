"""The one type every loader returns: :class:`ImageData`, a data set of flattened images
(:mod:`pyro_vae.data` for the named data sets, :mod:`pyro_vae.imagefiles` for the user's own
folders and arrays)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ImageData"]


@dataclass(frozen=True)
class ImageData:
    """A data set of flattened images.

    ``train_images`` is ``(N, D)``, ``uint8`` grey levels ``0..255`` for 8-bit data, else float32
    in ``[0, 1]``, with ``D`` the pixels of ``image_shape``: ``(H, W)``
    for grey images, ``(C, H, W)`` for colour ones (channels first, as PyTorch's conv layers
    take them); labels are int64 class indices or ``None`` (Frey Face has none). ``source``
    says where the images were read from.
    """

    name: str
    train_images: torch.Tensor  # (N, D)
    train_labels: torch.Tensor | None  # (N,)
    test_images: torch.Tensor  # (M, D)
    test_labels: torch.Tensor | None  # (M,)
    image_shape: tuple[int, ...]
    source: str
    class_names: tuple[str, ...] | None = None  # label i is class_names[i]
    # the data set's own validation images (V, D), used in place of a random share of the
    # training images (binarized MNIST's 10,000); None for the others
    valid_images: torch.Tensor | None = None

    @property
    def data_dim(self) -> int:
        return math.prod(self.image_shape)
