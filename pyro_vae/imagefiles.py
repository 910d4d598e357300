"""A user's own images: folders of PNG/JPEG files and .npy/.npz arrays.

``load_image_files(path, image_size=None)`` reads them into a ``pyro_vae.data.ImageData``, the
container of the built-in data sets, so that ``pyro-vae train --dataset PATH`` and
``pyro_vae.fit`` take them as they take MNIST.

**Folders** of ``.png``, ``.jpg`` and ``.jpeg`` files (any case), read with Pillow, in one of
three layouts:

```text
faces/                 a flat folder: no labels
    0001.png
    0002.jpg
    ...
animals/               one level of class folders: label i is the i-th class name, sorted
    cat/001.png
    dog/001.png
    ...
digits/                a given train/test split; each part flat or with class folders
    train/0/00001.png      (and then the same class names in both)
    test/0/00001.png
```

The split folders are named ``train`` and ``test``, in lower case; one without the other is an
error. Files are read in the order of their names. Hidden files (``.DS_Store``) and files of
other types (``README.txt``) are skipped, and so are folders inside a class folder; a folder
that holds images and sub-folders side by side is an error, since it is unclear which images a
label belongs to. Grey images (Pillow modes ``1``,
``L``, ``LA``, ``I;16``, ...) stay grey, 16-bit ones scaled to 0..255; if any image is in colour,
all are read as RGB (grey ones repeated in the three channels); an alpha channel is dropped.
Palette images count as colour. An EXIF orientation tag (a phone's portrait photo) is
applied, so images come out the way a viewer shows them.

Only regular files, or links to them, are read: a named pipe, socket or device with an image's
name is an error that names it, and is never opened (opening a pipe waits for a writer). An
image of more pixels than Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 unless changed,
about 9459x9459, 256 MiB decoded in RGB; Pillow's guard against decompression bombs) is
refused in one line; Pillow's warnings are not passed on.

**Arrays**: a ``.npy`` file holds one array of images. A ``.npz`` file holds ``train`` and
``test``, or ``x_train`` and ``x_test`` (optionally with integer labels ``y_train`` and
``y_test``), or a single array of images under any name. An array is ``(N, H, W)``,
``(N, H, W, C)`` or ``(N, C, H, W)`` with ``C`` = 1 (grey) or 3 (RGB); when both axis 1 and the
last axis could be channels, as in ``(N, 3, 8, 3)``, the array is read as ``(N, H, W, C)``,
the convention of NumPy and Pillow. Its dtype is ``uint8`` (0..255) or a float type with values
in ``[0, 1]``. Files are opened with ``allow_pickle=False``, so loading one runs no code.
An array whose header declares more data than its file holds is damaged, and refused before
anything is allocated for it.

**Memory**: before the pixels are read, the bytes they will take are checked against
:func:`pyro_vae.memory.available_memory` (what the machine, ``ulimit`` and the cgroup leave
this process): the arrays of a ``.npy`` or ``.npz`` as their headers declare them, the images
resized to ``image_size`` when it is given, and the images of a folder once the first one is
read (all must be its size). A set that cannot fit is refused in one line that names the limit.

**The result**: images are flattened channels first, ``(N, C * H * W)``, and ``image_shape`` is
``(H, W)`` for grey images and ``(3, H, W)`` for colour ones. Images that come as 8-bit (PNG,
JPEG, ``uint8`` arrays) stay ``torch.uint8`` (0..255), a quarter of the memory of floats; the
training code divides each batch by 255. Float arrays become ``float32``. Labels are int64
indices into ``class_names`` (the sorted class folders), or ``None``.

**Sizes**: all images must have the same height and width, unless ``image_size`` is given: then
every image is resized to it, with Pillow's antialiased bilinear filter for files and
``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``, the same filter, for
arrays.

**Test set**: when the input gives none (a flat or class folder, a ``.npy`` file, a ``.npz``
without test images), a fixed random 10% of the images (at least one) is held out as the test
set, drawn with the seed ``HOLDOUT_SEED``; the same files always give the same split, and
``source`` says so. The rest stay in file order.
"""

from __future__ import annotations

import numbers
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import torch

from pyro_vae.arrayfiles import (
    _array_images,
    _array_labels,
    _load_arrays,
    _match_splits,
    _resize,
)
from pyro_vae.datafiles import (
    _first_line,
    _Loaded,
    _not_regular,
    _NotRegularFile,
    _open_regular,
    _os_reason,
    _Splits,
)
from pyro_vae.errors import DataError, DataNotFoundError
from pyro_vae.imagedata import ImageData
from pyro_vae.memory import binding_limit, format_bytes

__all__ = [
    "ARRAY_SUFFIXES",
    "HOLDOUT_FRACTION",
    "HOLDOUT_SEED",
    "IMAGE_SUFFIXES",
    "images_from_tensors",
    "load_image_files",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
# The held-out test set is drawn with this seed, whatever the training seed, so that every run
# on the same files tests on the same images.
HOLDOUT_SEED = 2718
HOLDOUT_FRACTION = 0.1

# .npz keys: the images of each split, and the labels that go with them


def load_image_files(
    path: str | os.PathLike, image_size: int | tuple[int, int] | None = None
) -> ImageData:
    """Images from a folder of PNG/JPEG files, a ``.npy`` or a ``.npz`` file.

    The layouts, the pixel types and the held-out test set are described above, in the
    docstring of the module ``pyro_vae.imagefiles``.

    :param path: a folder, a ``.npy`` or a ``.npz`` file.
    :param image_size: resize every image to ``(height, width)``; an int means a square. Without
        it, images of different sizes are an error.
    :returns: the images, flattened channels first: ``torch.uint8`` 0..255 for 8-bit images,
        ``float32`` in ``[0, 1]`` for float arrays. ``name`` is ``path`` as given, ``source``
        says what was read and where the test set came from.
    :raises DataNotFoundError: nothing is at ``path``.
    :raises DataError: the input cannot be used (no images, an unreadable or truncated file, a
        named pipe or device, an image over Pillow's pixel limit, mixed sizes, an unsupported
        shape or dtype, values outside ``[0, 1]``, NaN, train and test that do not match, a bad
        ``image_size``, more bytes than this process's memory holds); the one-line message
        names the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"the images' path must be a path, got {path!r}")
    size = _check_image_size(image_size)
    name = os.fspath(path)
    where = Path(name).expanduser()
    info = _stat(where)
    if not stat.S_ISDIR(info.st_mode):
        suffix = where.suffix.lower()
        if suffix not in ARRAY_SUFFIXES:
            hint = " (give the folder that holds the images)" if suffix in IMAGE_SUFFIXES else ""
            raise DataError(
                f"cannot use {where}: unknown file type {suffix or '(no extension)'!r}; expected "
                f"a folder of PNG/JPEG images, a .npy or a .npz file{hint}"
            )
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"cannot read {where}: {_not_regular(where, info.st_mode)}")
    try:
        if stat.S_ISDIR(info.st_mode):
            splits, classes, source = _load_folder(where, size)
        else:
            splits, classes, source = _load_arrays(where, size)
        return _image_data(name, splits, classes, source, size)
    except MemoryError:
        pass  # reported below, once the partly read images are freed
    limit = binding_limit()
    room = f" ({limit.describe()})" if limit is not None else ""
    raise DataError(
        f"cannot read {where}: out of memory while reading its images{room}; use fewer "
        "images, or smaller ones with image_size (--image-size)"
    )


def images_from_tensors(
    train: torch.Tensor | np.ndarray,
    test: torch.Tensor | np.ndarray | None = None,
    train_labels: torch.Tensor | np.ndarray | None = None,
    test_labels: torch.Tensor | np.ndarray | None = None,
    image_size: int | tuple[int, int] | None = None,
    name: str = "tensors",
    class_names: tuple[str, ...] | None = None,
) -> ImageData:
    """Images held in Python, as :func:`pyro_vae.train.fit` takes them (``fit(config,
    data=images_from_tensors(x))``), read with the same rules as a ``.npz`` file.

    :param train: ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with ``C`` = 1 or 3,
        uint8 0..255 or float in ``[0, 1]``; a tensor or a NumPy array.
    :param test: test images of the same kind; without them a fixed random 10% of ``train`` is
        held out (``HOLDOUT_SEED``).
    :param train_labels: class indices ``(N,)``, and ``test_labels`` for the test images.
    :param class_names: label ``i`` is ``class_names[i]``, for the pictures.
    :raises DataError: images or labels the rules above refuse (one line that says which).
    """
    size = _check_image_size(image_size)

    def array(value, what: str) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            return value
        raise DataError(
            f"{what} must be a torch.Tensor or a NumPy array, got {type(value).__name__}"
        )

    splits: _Splits = {}
    parts = {"all" if test is None else "train": (train, train_labels, "train")}
    if test is not None:
        parts["test"] = (test, test_labels, "test")
    elif test_labels is not None:
        raise DataError("test labels were given without test images")
    for split, (images, labels, what) in parts.items():
        images = _array_images(array(images, f"the {what} images"), f"the {what} images")
        if size is not None:
            images = _resize(images, size)
        if labels is not None:
            labels = _array_labels(array(labels, f"the {what} labels"), f"the {what} labels",
                                   images.shape[0])  # fmt: skip
        splits[split] = (images, labels)
    if test is not None:
        if (train_labels is None) != (test_labels is None):
            raise DataError("give labels for both the train and the test images, or for neither")
        keys = {"train": ("train", None), "test": ("test", None)}
        splits = _match_splits(Path(name), keys, splits)
    return _image_data(name, splits, class_names, f"{name} (from Python)", size)


def _check_image_size(image_size: object) -> tuple[int, int] | None:
    if image_size is None:
        return None

    def whole(x: object) -> bool:
        return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x > 0

    if whole(image_size):
        return int(image_size), int(image_size)
    if (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(map(whole, image_size))
    ):
        return int(image_size[0]), int(image_size[1])
    raise DataError(
        f"image_size must be a positive whole number or a pair (height, width) of them, "
        f"got {image_size!r}"
    )


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        detail = " (a broken symbolic link)" if os.path.islink(path) else ""
        raise DataNotFoundError(f"no images at {path}: no such file or folder{detail}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {_os_reason(e)}") from None


def _describe(shape: tuple[int, ...]) -> str:
    """``28x28 grey`` or ``32x32 RGB`` (height x width, as elsewhere in pyro_vae)."""
    return f"{shape[-2]}x{shape[-1]} {'RGB' if len(shape) == 3 else 'grey'}"


def _image_data(
    name: str,
    splits: _Splits,
    class_names: tuple[str, ...] | None,
    source: str,
    size: tuple[int, int] | None,
) -> ImageData:
    carved = "all" in splits
    if carved:
        images, labels = splits["all"]
        train, test = _hold_out(images, labels, source)
    else:
        train, test = splits["train"], splits["test"]
    shape = tuple(train[0].shape[1:])
    image_shape = shape[1:] if shape[0] == 1 else shape  # (1, H, W) -> (H, W)
    note = (
        f"test set: a fixed random {HOLDOUT_FRACTION:.0%} held out (seed {HOLDOUT_SEED})"
        if carved
        else "test set as given"
    )
    classes = f", {len(class_names)} classes" if class_names else ""
    resized = ", resized" if size else ""
    return ImageData(
        name=name,
        train_images=train[0].reshape(train[0].shape[0], -1),
        train_labels=train[1],
        test_images=test[0].reshape(test[0].shape[0], -1),
        test_labels=test[1],
        image_shape=image_shape,
        source=(
            f"{source}: {train[0].shape[0]} train and {test[0].shape[0]} test images, "
            f"{_describe(image_shape)}{resized}{classes}; {note}"
        ),
        class_names=class_names,
    )


def _hold_out(
    images: torch.Tensor, labels: torch.Tensor | None, source: str
) -> tuple[tuple[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]:
    """A fixed random ``HOLDOUT_FRACTION`` of the images (at least one) as the test set;
    both parts keep the file order."""
    n = images.shape[0]
    if n < 2:
        raise DataError(
            f"{source} holds {n} image; at least 2 are needed, one to train on and one to test on"
        )
    num_test = min(max(1, round(n * HOLDOUT_FRACTION)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    test = order[:num_test].sort().values
    train = order[num_test:].sort().values

    def pick(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return images[index], None if labels is None else labels[index]

    return pick(train), pick(test)


# ---------------------------------------------------------------------------------------------
# Folders of image files


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """The visible sub-folders and image files of ``folder``, each sorted by name.

    :raises DataError: an entry with an image's name is a named pipe, a socket or a device
        (or a link to one), which is not opened.
    """
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as e:
        raise DataError(f"cannot read folder {folder}: {_os_reason(e)}") from None
    folders, images = [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            folders.append(Path(entry.path))
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            # a broken link or an unreadable file is not skipped: reading it names the problem
            try:  # is_file() needs no system call for a plain file; stat() follows a link
                mode = stat.S_IFREG if entry.is_file() else entry.stat().st_mode
            except OSError:
                mode = stat.S_IFREG
            if not stat.S_ISREG(mode):
                raise DataError(
                    f"cannot read image file {entry.path}: {_not_regular(Path(entry.path), mode)}; "
                    f"remove it, or move it out of {folder}"
                )
            images.append(Path(entry.path))
    return folders, images


def _list_split(folder: Path) -> tuple[list[Path], list[int] | None, tuple[str, ...] | None]:
    """The image files of a flat or class folder, their labels and the class names."""
    folders, images = _entries(folder)
    if folders and images:
        raise DataError(
            f"{folder} holds both images ({images[0].name}, ...) and sub-folders "
            f"({folders[0].name}/, ...); put all images in class folders, or none"
        )
    if images:
        return images, None, None
    if not folders:
        raise DataError(f"no PNG or JPEG images in {folder}")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_folder in enumerate(folders):
        found = _entries(class_folder)[1]
        if not found:
            raise DataError(f"class folder {class_folder} holds no PNG or JPEG images")
        files += found
        labels += [label] * len(found)
    return files, labels, tuple(f.name for f in folders)


def _split_folders(root: Path) -> dict[str, Path]:
    """``{"train": root/train, "test": root/test}`` when the folder gives a split, else
    ``{"all": root}``."""
    folders, images = _entries(root)
    names = [f.name for f in folders]
    if "train" not in names and "test" not in names:
        return {"all": root}
    if "train" not in names or "test" not in names:
        have, lack = ("train", "test") if "train" in names else ("test", "train")
        raise DataError(
            f"{root} has a {have}/ folder but no {lack}/ folder; give both, or rename "
            f"{have}/ if it is a class"
        )
    extra = [f"{n}/" for n in names if n not in ("train", "test")] + [f.name for f in images]
    if extra:
        raise DataError(
            f"{root} holds train/ and test/ and also {extra[0]}; move it elsewhere, since "
            "every image must be in train/ or test/"
        )
    return {"train": root / "train", "test": root / "test"}


def _read_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """The pixels of one image file, ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8.

    Pillow's warnings (a decompression bomb, damaged EXIF data, a palette's transparency) are
    kept from the user: an image over Pillow's pixel limit is refused, the others are read.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return _decode(path, size, caught)
    except DataError:
        raise
    except _NotRegularFile as e:
        raise DataError(f"cannot read image file {path}: {e}") from None
    except Image.DecompressionBombError as e:  # over twice the limit: Pillow's own error
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_many_pixels(path, int(pixels[1]) if pixels else None) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow's message repeats the path, or the file object; the file is named once, at
        # the front
        reason = _os_reason(e) if isinstance(e, OSError) else _first_line(e)
        for named in (f"<_io.BufferedReader name={str(path)!r}>", repr(str(path))):
            reason = reason.replace(f" {named}", "")
        raise DataError(f"cannot read image file {path}: {reason}") from None


def _decode(path: Path, size: tuple[int, int] | None, caught: list) -> np.ndarray:
    from PIL import Image, ImageOps

    with _open_regular(path) as file, Image.open(file) as image:
        if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
            width, height = image.size
            raise _too_many_pixels(path, width * height, f"{height}x{width}")
        image.load()  # decode now, so that a truncated file fails here, with its name
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):
        # 16-bit grey: scale 0..65535 to 0..255 (Pillow's convert("L") clips at 255 instead)
        levels = np.asarray(image).astype(np.float64).clip(0, 65535)
        image = Image.fromarray(np.rint(levels / 257).astype(np.uint8))
    elif image.mode in ("1", "L", "LA", "La", "F"):
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA").convert("RGB")  # via RGBA: a transparent palette entry
    else:
        image = image.convert("RGB")  # RGBA, CMYK, YCbCr, ...: alpha dropped
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # antialiased
    return np.asarray(image)


def _too_many_pixels(path: Path, pixels: int | None, shape: str = "") -> DataError:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    size = f"{shape}, " if shape else ""
    count = f"{pixels:,} pixels" if pixels else "too many pixels"
    return DataError(
        f"cannot read image file {path}: {size}{count}, more than the {limit:,} that pyro_vae "
        "reads (Pillow's MAX_IMAGE_PIXELS, a guard against decompression bombs); make it smaller"
    )


def _load_folder(root: Path, size: tuple[int, int] | None) -> _Loaded:
    parts = _split_folders(root)
    listed = {split: _list_split(folder) for split, folder in parts.items()}
    if "train" in listed:
        train_classes, test_classes = listed["train"][2], listed["test"][2]
        if train_classes != test_classes:
            raise DataError(
                f"{root}: train/ and test/ have different classes: "
                f"{_class_list(train_classes)} in train/, {_class_list(test_classes)} in test/"
            )
    files = [file for split in listed.values() for file in split[0]]
    images = _read_images(root, files, size)
    splits: _Splits = {}
    start = 0
    for split, (split_files, labels, _) in listed.items():
        stop = start + len(split_files)
        labels = None if labels is None else torch.tensor(labels, dtype=torch.int64)
        splits[split] = (images[start:stop], labels)
        start = stop
    return splits, next(iter(listed.values()))[2], f"folder {root}"


def _read_images(root: Path, files: list[Path], size: tuple[int, int] | None) -> torch.Tensor:
    """The images of ``files``, ``(N, C, H, W)`` uint8, read one at a time into one array
    (not into a list that is then stacked: a second copy), its size checked against the
    memory this process has left:
    with ``size``, before a file is read (at one byte a pixel, the least the images take);
    then once the first image gives the size and the channels."""
    limit = binding_limit()  # read once: the check is against what the process had to start

    def check(h: int, w: int, channels: int) -> None:
        needed = len(files) * channels * h * w
        if limit is None or needed <= limit.available:
            return
        what = f"{len(files)} images of {root}"
        if size is not None:
            least = " at least" if channels == 1 else ""
            raise DataError(
                f"cannot resize the {what} to {h}x{w} (image_size, --image-size): they would "
                f"take{least} {format_bytes(needed)}, but {limit.describe()}; choose a smaller "
                "--image-size"
            )
        raise DataError(
            f"cannot read the {what}: at {h}x{w} {'RGB' if channels == 3 else 'grey'} they "
            f"would take {format_bytes(needed)}, but {limit.describe()}; shrink them with "
            "image_size (--image-size), or use fewer"
        )

    if size is not None:
        check(*size, 1)
    first = _read_image(files[0], size)
    h, w = first.shape[:2]
    channels = 3 if first.ndim == 3 else 1
    check(h, w, channels)
    images = np.empty((len(files), channels, h, w), dtype=np.uint8)  # (N, C, H, W)
    for i, file in enumerate(files):
        pixels = first if i == 0 else _read_image(file, size)
        if pixels.shape[:2] != (h, w):
            raise DataError(
                f"images of different sizes: {files[0]} is {h}x{w} and {file} is "
                f"{pixels.shape[0]}x{pixels.shape[1]} (height x width); resize them all with "
                "image_size (--image-size)"
            )
        if pixels.ndim == 3 and channels == 1:  # the first colour image: all become RGB
            channels = 3
            check(h, w, channels)
            grey, images = images, np.empty((len(files), channels, h, w), dtype=np.uint8)
            images[:i] = grey[:i]  # grey repeated in the three channels
            del grey
        # (H, W, 3) -> (3, H, W); a grey (H, W) image fills one channel, or all three
        images[i] = pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels
    return torch.from_numpy(images)


def _class_list(classes: tuple[str, ...] | None) -> str:
    return ", ".join(classes) if classes else "no class folders"
