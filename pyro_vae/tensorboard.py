"""An optional TensorBoard log of a training run (``pyro-vae train --tensorboard``).

What :func:`pyro_vae.train.fit` writes through :class:`TensorBoardLog` when given a
``tensorboard`` folder (the CLI uses ``RUN/tensorboard``)::

    elbo/train        every step: the step's training ELBO, nats per image
    elbo/validation   every epoch: the validation ELBO (elbo/test for a run without a split)
    samples           every epoch: mean images E[x|z] of 64 draws z ~ p(z), the same draws
                      each epoch
    reconstructions   every epoch: 16 held-out images above their reconstructions
    completions       a quadrant-completion CVAE's instead of both: 16 held-out images above
                      a completion each

``metrics.jsonl`` stays the record of truth; the TensorBoard log is for watching a run. It
needs the ``tensorboard`` package (``pip install "pyro-vae[tensorboard]"``). Drawing the
pictures uses a generator of its own, so a run with a log trains exactly as one without.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from pyro_vae.errors import ConfigError, OutputError
from pyro_vae.model import VAE, image_shape_chw

__all__ = ["TensorBoardLog"]

NUM_SAMPLES, NUM_RECONSTRUCTIONS = 64, 16
SAMPLE_SEED = 0


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            'a TensorBoard log needs the tensorboard package: pip install "pyro-vae[tensorboard]"'
        ) from None
    return SummaryWriter


def _grid(images: torch.Tensor, image_shape, ncols: int) -> torch.Tensor:
    """``(N, ...)`` images in ``[0, 1]`` -> one ``(C, H', W')`` mosaic, grey or RGB, a black
    pixel around each (torchvision's ``make_grid``)."""
    from torchvision.utils import make_grid  # torchvision takes a second to import

    c, h, w = image_shape_chw(image_shape)
    images = images.detach().float().cpu().clamp(0, 1).reshape(-1, c, h, w)
    if len(images) < ncols:  # make_grid would make the grid only as wide as the images
        blank = images.new_zeros((ncols - len(images), c, h, w))
        images = torch.cat([images, blank])
    if len(images) == 1:  # make_grid returns one image as it is, without the border
        return torch.nn.functional.pad(images[0], (1, 1, 1, 1))
    return make_grid(images, nrow=ncols, padding=1, pad_value=0.0)[:c]  # grey comes as RGB


class TensorBoardLog:
    """Scalars and image grids of one run, written to ``log_dir`` as TensorBoard events.

    :param log_dir: the folder of the event files (created if need be).
    :param image_shape: ``(H, W)`` or ``(C, H, W)`` of the run's images.
    :param held_out: a few held-out images ``(N, ...)`` for the reconstruction grid.
    :raises ConfigError: the tensorboard package is not installed.
    :raises OutputError: ``log_dir`` cannot be created or written.
    """

    def __init__(
        self, log_dir: str | os.PathLike, image_shape, held_out: torch.Tensor | None = None
    ) -> None:
        writer = _summary_writer()
        self.log_dir = Path(log_dir)
        try:
            # the event file is written by a thread of tensorboard's, whose failure would come
            # later, as its traceback: a folder that cannot be written is found here instead
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.log_dir):
                pass
            self.writer = writer(log_dir=str(self.log_dir))
        except OSError as e:
            raise OutputError(
                f"cannot write the TensorBoard log in {self.log_dir}: {e.strerror or e}"
            ) from None
        self.image_shape = tuple(image_shape)
        self.held_out = None if held_out is None else held_out[:NUM_RECONSTRUCTIONS]

    def step(self, step: int, train_elbo: float, kl_weight: float | None = None) -> None:
        """One training step's ELBO, nats per image (beta's bound in a beta-VAE or a warm-up,
        whose weight ``kl_weight`` is logged with it)."""
        self.writer.add_scalar("elbo/train", train_elbo, step)
        if kl_weight is not None:
            self.writer.add_scalar("kl_weight", kl_weight, step)

    @torch.no_grad()
    def epoch(self, step: int, label: str, score: float, vae: VAE) -> None:
        """An epoch's held-out ELBO (``label``: validation or test) and the image grids."""
        self.writer.add_scalar(f"elbo/{label}", score, step)
        generator = torch.Generator(device=next(vae.parameters()).device)
        generator.manual_seed(SAMPLE_SEED)
        condition = getattr(vae, "condition", "label")  # a CVAE's; quadrants: completions
        if condition == "label":
            samples = vae.sample(NUM_SAMPLES, generator=generator)
            self.writer.add_image("samples", _grid(samples, self.image_shape, 8), step)
        if self.held_out is not None and len(self.held_out):
            x = self.held_out
            if condition != "label":
                pairs, tag = torch.cat([x, vae.complete(x, 1, generator)[0]]), "completions"
            elif getattr(vae, "needs_labels", False):  # a CVAE on the label reconstructs none
                pairs = None
            else:
                pairs, tag = torch.cat([x, vae.reconstruct(x)]), "reconstructions"
            if pairs is not None:
                self.writer.add_image(tag, _grid(pairs, self.image_shape, len(x)), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
