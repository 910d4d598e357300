"""Make ``mnist_sample.npz``, the small MNIST slice bundled with pyro_vae.

It lets ``pyro-vae train`` run on a machine with no MNIST and no internet. A fixed random
5000 training and 1000 test digits (seed 0) are kept as uint8 with their labels::

    python -m pyro_vae._bundled.make_mnist_sample --data-dir ../shared/data
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision

NUM_TRAIN, NUM_TEST = 5000, 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--out", default=str(Path(__file__).with_name("mnist_sample.npz")))
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    arrays = {}
    for split, train, size in (("train", True, NUM_TRAIN), ("test", False, NUM_TEST)):
        mnist = torchvision.datasets.MNIST(args.data_dir, train=train, download=False)
        keep = torch.randperm(len(mnist.data), generator=generator)[:size].sort().values
        arrays[f"{split}_images"] = mnist.data[keep].numpy()  # (size, 28, 28) uint8
        arrays[f"{split}_labels"] = mnist.targets[keep].numpy().astype(np.uint8)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: {NUM_TRAIN} train, {NUM_TEST} test digits")


if __name__ == "__main__":
    main()
