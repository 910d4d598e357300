"""Pictures of a trained VAE. Each function returns a matplotlib Figure; the caller saves it.

Figures are built with :class:`matplotlib.figure.Figure` directly, not ``pyplot``, so they work
without a display and leave no global figure state behind.
"""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure

from pyro_vae.model import VAE

__all__ = ["image_grid", "reconstructions_figure", "samples_figure"]


def _tile(images: torch.Tensor, image_shape: tuple[int, int], ncols: int, pad: int = 1):
    # (N, H*W) -> one (rows * (H + pad), ncols * (W + pad)) mosaic; ink is 1, and the padding
    # 0.15 shows as thin light-grey lines once the mosaic is drawn as black ink on white
    h, w = image_shape
    n = images.shape[0]
    nrows = math.ceil(n / ncols)
    canvas = torch.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), 0.15)
    for i, image in enumerate(images.detach().float().cpu().reshape(n, h, w)):
        r, c = divmod(i, ncols)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = image
    return canvas


def image_grid(
    images: torch.Tensor,
    image_shape: tuple[int, int],
    ncols: int | None = None,
    title: str | None = None,
) -> Figure:
    """A grid of grey images in ``[0, 1]`` (``(N, H*W)``), black ink on white."""
    n = images.shape[0]
    ncols = ncols or math.ceil(math.sqrt(n))
    canvas = _tile(images.clamp(0, 1), image_shape, ncols)
    scale = 6.0 / max(canvas.shape)
    fig = Figure(figsize=(canvas.shape[1] * scale + 0.2, canvas.shape[0] * scale + 0.6))
    ax = fig.add_subplot()
    ax.imshow(1 - canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def samples_figure(
    vae: VAE, image_shape: tuple[int, int], num_samples: int = 64, seed: int = 0
) -> Figure:
    """Mean images ``E[x|z]`` for ``z ~ N(0, I)``."""
    generator = torch.Generator(device=next(vae.parameters()).device).manual_seed(seed)
    images = vae.sample(num_samples, generator=generator)
    return image_grid(images, image_shape, title=f"{num_samples} samples from the prior (means)")


def reconstructions_figure(
    originals: torch.Tensor, reconstructions: torch.Tensor, image_shape: tuple[int, int]
) -> Figure:
    """Originals (top row of each pair) over their reconstructions ``E[x | z = mu(x)]``."""
    n = originals.shape[0]
    ncols = min(n, 16)
    rows = []
    for start in range(0, n, ncols):
        for images in (originals, reconstructions):
            row = images[start : start + ncols].detach().cpu()
            blank = row.new_zeros(ncols - row.shape[0], row.shape[1])  # pad a short last row
            rows.append(torch.cat([row, blank]))
    return image_grid(
        torch.cat(rows), image_shape, ncols, title="originals (above) and reconstructions (below)"
    )
