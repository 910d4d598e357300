"""The picture mosaics are torchvision's ``make_grid``: the same pixels as the loops they
replaced (written out here as the reference), for grey and colour images, full and partial
last rows, and a single image (which ``make_grid`` returns without padding)."""

import math

import pytest
import torch

from pyro_vae.plots import _tile
from pyro_vae.tensorboard import _grid


def _reference(images, image_shape, ncols, pad, fill, border):
    shape = tuple(image_shape)
    c, h, w = (1, *shape) if len(shape) == 2 else shape
    images = images.float().reshape(-1, c, h, w)
    rows = math.ceil(len(images) / ncols)
    edge = pad if border else 0
    canvas = torch.full((c, rows * (h + pad) - pad + 2 * edge, ncols * (w + pad) - pad + 2 * edge),
                        fill)  # fmt: skip
    for i, image in enumerate(images):
        r, col = divmod(i, ncols)
        top, left = edge + r * (h + pad), edge + col * (w + pad)
        canvas[:, top : top + h, left : left + w] = image
    return canvas


CASES = [((5, 4), 7, 3), ((3, 5, 4), 10, 4), ((28, 28), 64, 8), ((1, 6, 6), 1, 1), ((2, 3), 2, 5)]


@pytest.mark.parametrize("shape, n, ncols", CASES)
def test_the_figures_mosaic(shape, n, ncols):
    x = torch.rand(n, math.prod(shape), generator=torch.Generator().manual_seed(n))
    expected = _reference(x, shape, ncols, pad=1, fill=0.15, border=False)
    assert torch.equal(_tile(x, shape, ncols), expected)


@pytest.mark.parametrize("shape, n, ncols", CASES)
def test_the_tensorboard_mosaic(shape, n, ncols):
    x = torch.rand(n, math.prod(shape), generator=torch.Generator().manual_seed(n))
    expected = _reference(x, shape, ncols, pad=1, fill=0.0, border=True)
    assert torch.equal(_grid(x, shape, ncols), expected)
