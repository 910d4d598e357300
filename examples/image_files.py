"""Example: train on your own images, from a folder of PNG files or a NumPy array.

Writes a few thousand Fashion-MNIST images the way a user might hold their own: PNG files in
class folders (``OUT/png/train/<class>/00000.png``, ``OUT/png/test/<class>/...``), the same
images as ``OUT/images.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``) and the training
images alone as ``OUT/images.npy``. It reads each back with
:func:`pyro_vae.imagefiles.load_image_files`, checks every pixel and label against the source,
and trains a VAE on the folder and on the ``.npy`` file through the command line,
``pyro-vae train --dataset PATH``. ``OUT/png`` and ``OUT/runs`` are replaced on every run::

    python examples/image_files.py --data-dir ../shared/data    # about a minute on 2 cores
    python examples/image_files.py --quick                      # the bundled MNIST sample
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pyro_vae.data import load_dataset
from pyro_vae.errors import PyroVAEError
from pyro_vae.imagefiles import load_image_files

# Fashion-MNIST's classes, label i is FASHION_CLASSES[i], named so that they can be folder
# names ("T-shirt/top" cannot).
FASHION_CLASSES = (
    "t-shirt-top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
DIGITS = tuple(str(d) for d in range(10))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Flattened images (bytes as stored, or grey levels in [0, 1]) as (N, 28, 28) bytes."""
    if images.dtype != torch.uint8:
        images = (images * 255).round().to(torch.uint8)
    return images.reshape(-1, 28, 28).numpy()


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, classes) -> None:
    """One PNG a picture: ``folder/<class name>/NNNNN.png``, NNNNN its place in ``images``."""
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / classes[label] / f"{index:05d}.png")


def in_folder_order(images: np.ndarray, labels: np.ndarray, classes):
    """The images and labels as a class-folder layout reads them: label i becomes the i-th
    folder name in sorted order (``ankle-boot`` is 0), files in name order within a folder."""
    rank = {name: i for i, name in enumerate(sorted(classes))}
    new_labels = np.array([rank[classes[label]] for label in labels])
    order = np.argsort(new_labels, kind="stable")
    return images[order], new_labels[order]


def check(same: bool, what: str) -> None:
    if not same:  # a bug, not a user's mistake: keep its traceback
        raise RuntimeError(f"{what} differ from those written")
    print(f"  {what}: equal to those written")


def train(dataset: Path, run: Path, args: argparse.Namespace) -> bool:
    """``pyro-vae train --dataset PATH`` in a fresh process; prints its result line."""
    command = [
        *(sys.executable, "-m", "pyro_vae", "train", "--dataset", str(dataset)),
        *("--epochs", str(args.epochs), "--out", str(run), "--no-progress"),
        *("--eval-particles", str(args.eval_particles), "--eval-images", "500"),
        *(["--no-plots"] if args.quick else []),
    ]
    print(f"$ pyro-vae train --dataset {dataset} --epochs {args.epochs} --out {run} ...")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    scores = [line.strip() for line in lines if "test ELBO" in line]
    if done.returncode == 0:
        print(f"  {scores[-1] if scores else lines[-1] if lines else 'done'}")
        return True
    errors = done.stderr.strip().splitlines() or lines or ["(no output)"]
    print(f"  failed (exit code {done.returncode}): {errors[-1]}")
    return False


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # first: an unwritable --out fails before the rest
    if args.quick:
        data, classes = load_dataset("mnist-sample"), DIGITS
    else:
        data, classes = load_dataset("fashion-mnist", args.data_dir), FASHION_CLASSES
    train_images = to_uint8(data.train_images[: args.train_size])  # (N, 28, 28) uint8
    # the bytes written are the data set's own, grey level for grey level
    source = data.train_images[: args.train_size].float() / 255
    check(torch.equal(torch.from_numpy(train_images).reshape(len(source), -1) / 255, source),
          "the bytes to write (the data set's own grey levels)")  # fmt: skip
    train_labels = data.train_labels[: args.train_size].numpy()
    test_images = to_uint8(data.test_images[: args.test_size])
    test_labels = data.test_labels[: args.test_size].numpy()

    # 1. Write the images three ways.
    png = out / "png"
    for stale in (png, out / "runs"):  # earlier runs' files would be read, or refused
        shutil.rmtree(stale, ignore_errors=True)
    write_pngs(png / "train", train_images, train_labels, classes)
    write_pngs(png / "test", test_images, test_labels, classes)
    np.savez(
        out / "images.npz",
        x_train=train_images,
        y_train=train_labels,
        x_test=test_images,
        y_test=test_labels,
    )
    np.save(out / "images.npy", train_images)
    print(
        f"wrote {len(train_images)} training and {len(test_images)} test images of "
        f"{data.name}:\n  {png}/train/<class>/NNNNN.png and {png}/test/<class>/NNNNN.png "
        f"({len(classes)} classes)\n  {out / 'images.npz'} (x_train, y_train, x_test, y_test)\n"
        f"  {out / 'images.npy'} (the training images)"
    )

    # 2. Read them back, and check every pixel and label.
    folder = load_image_files(png)
    print(f"read back {folder.source}")
    for split, images, labels in (
        ("train", train_images, train_labels),
        ("test", test_images, test_labels),
    ):
        images, labels = in_folder_order(images, labels, classes)
        loaded_images = getattr(folder, f"{split}_images")  # (N, 784) uint8
        loaded_labels = getattr(folder, f"{split}_labels")
        same = np.array_equal(loaded_images.numpy(), images.reshape(len(images), -1))
        same &= np.array_equal(loaded_labels.numpy(), labels)
        check(same, f"PNG {split} images and labels")
    check(folder.class_names == tuple(sorted(classes)), "class names, sorted")

    arrays = load_image_files(out / "images.npz")
    print(f"read back {arrays.source}")
    same = np.array_equal(arrays.train_images.numpy(), train_images.reshape(len(train_images), -1))
    same &= np.array_equal(arrays.test_images.numpy(), test_images.reshape(len(test_images), -1))
    same &= np.array_equal(arrays.train_labels.numpy(), train_labels)
    same &= np.array_equal(arrays.test_labels.numpy(), test_labels)
    check(same, ".npz images and labels")

    held_out = load_image_files(out / "images.npy")
    print(f"read back {held_out.source}")
    # the .npy has no test set: a fixed 10% is held out, and the rest keep their order
    written = {image.tobytes() for image in train_images}
    loaded = torch.cat([held_out.train_images, held_out.test_images]).numpy()
    check(
        len(loaded) == len(train_images) and all(row.tobytes() in written for row in loaded),
        ".npy images, split into train and test",
    )

    # 3. Train on the folder and on the .npy file from the command line.
    runs = ((png, out / "runs" / "png"), (out / "images.npy", out / "runs" / "npy"))
    results = [train(dataset, run, args) for dataset, run in runs]
    return 0 if all(results) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="where Fashion-MNIST is")
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--eval-particles", type=int, default=100)
    parser.add_argument("--out", default="image-files")
    parser.add_argument("--quick", action="store_true", help="a few hundred MNIST digits")
    args = parser.parse_args()
    if args.quick:
        args.train_size, args.test_size, args.epochs, args.eval_particles = 300, 100, 1, 10
    try:
        sys.exit(main(args))
    except PyroVAEError as e:
        sys.exit(f"{Path(__file__).name}: error: {e}")
    except OSError as e:  # --out cannot be written
        where = e.filename or args.out
        sys.exit(f"{Path(__file__).name}: error: cannot write {where}: {e.strerror or e}")
