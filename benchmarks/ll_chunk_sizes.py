"""Which chunk size makes the importance-sampled log-likelihood fastest on this machine.

For each ``--max-rows`` (particle-image rows decoded at once), pyro_vae's
``importance_sampled_log_likelihood`` and the plain PyTorch loop of ``log_likelihood.py``, with
the same chunks, score the first ``--num-images`` binarized MNIST test images at K = 5000,
alternately 100 images at a time (in rotating order), with an untrained default VAE (the time
does not depend on the weights) and Pyro's validation off. Prints seconds and their ratio::

    python benchmarks/ll_chunk_sizes.py --data-dir ../shared/data --num-images 300
"""

import argparse
import time

import pyro
import torch
from log_likelihood import plain_log_likelihood

from pyro_vae.data import load_dataset, prepare_images
from pyro_vae.evaluate import importance_sampled_log_likelihood
from pyro_vae.model import VAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("-K", "--num-particles", type=int, default=5000)
    parser.add_argument("--max-rows", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    args = parser.parse_args()
    _, test = prepare_images(load_dataset("mnist", args.data_dir), "dynamic", "bernoulli", seed=0)
    pyro.set_rng_seed(0)
    vae = VAE(784).eval()
    images, k = test[: args.num_images], args.num_particles
    print("| max rows | pyro_vae s | plain s | ratio |\n|---|---|---|---|")
    for rows in args.max_rows:
        seconds = [0.0, 0.0]
        with torch.no_grad(), pyro.validation_enabled(False):
            for i, x in enumerate(images.split(100)):
                for side in (0, 1) if i % 2 == 0 else (1, 0):
                    started = time.perf_counter()
                    if side == 0:
                        importance_sampled_log_likelihood(vae.model, vae.guide, x, k, 100, rows)
                    else:
                        plain_log_likelihood(vae, x, k, rows)
                    seconds[side] += time.perf_counter() - started
        print(f"| {rows} | {seconds[0]:.1f} | {seconds[1]:.1f} | {seconds[0] / seconds[1]:.3f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
