"""Ask a trained model about your own digits.

    python -m jaxmnist.predict digit.png photo.jpg --workdir ckpt/fast            # the best checkpoint
    python -m jaxmnist.predict digits.npy --workdir ckpt/fast --which latest --json
    python -m jaxmnist.predict t10k-images-idx3-ubyte --torch-state-dict cnn.pth --model cnn
    python -m jaxmnist.predict digit.png --workdir ckpt/fast --seed all   # the seeds of --seeds: an ensemble

Images are anything PIL reads, of any size, colour or grey, dark ink on light paper or the reverse. Each becomes
an MNIST input the way MNIST was made (docs/data.md, "How the digits were made"): grey, ink bright on black,
cropped to the digit, fitted into 20x20 keeping its aspect ratio, and centred by its centre of mass in 28x28. A
28x28 grey image whose ink is already bright on a dark ground is MNIST's own format and is taken as it is. IDX
image files and `.npy` arrays ([28, 28] or [N, 28, 28], uint8 or floats in [0, 1]) hold MNIST-format digits and
are taken as they are too.
Each prediction prints the top classes with their probabilities; a file that cannot be read is one line on
stderr, the others go on, and the exit code is then 1.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from jaxmnist import cli, compile_cache, weights
from jaxmnist import data as data_lib
from jaxmnist.cli import RunError, UsageError

INK = 0.1  # a pixel is ink when it is at least this fraction of the brightest one (after the background)


# ------------------------------------------------------------------------------------ MNIST-like input
def to_mnist(image) -> np.ndarray:
    """A PIL image -> uint8 [28, 28], ink bright on black, as MNIST's digits were made."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)  # a phone's photo as it was taken, not as its sensor stored it
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")  # transparent paper is white paper
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    grey = grey_levels(image)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:  # light paper: MNIST's ink is the bright part
        grey = 255.0 - grey
        border = 255.0 - border
    if grey.shape == (28, 28) and np.median(border) < 32:
        return grey.round().astype(np.uint8)  # already MNIST's format
    ink = np.clip(grey - np.median(border), 0, None)
    if ink.max() <= 0:
        raise ValueError("no digit found: the image is one flat colour")
    ink /= ink.max()
    rows, cols = np.nonzero(ink >= INK)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return centre_by_mass(fit_20x20(ink))


def grey_levels(image) -> np.ndarray:
    """The image's grey levels as floats in [0, 255]. PIL's conversion to 'L' clips 16- and 32-bit images at 255
    (a 16-bit scan kept a tenth of its ink): those are scaled from their range instead (floats: [0, 1] or
    [0, 255])."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        levels = np.asarray(image, np.float64)
        if not np.isfinite(levels).all():
            raise ValueError("the image holds NaN or infinite values")
        if image.mode == "F":
            top = 1.0 if levels.max() <= 1 else 255.0
        else:
            top = 65535.0 if levels.max() > 255 else 255.0
        return (np.clip(levels, 0, top) * (255.0 / top)).astype(np.float32)
    return np.asarray(image.convert("L"), np.float32)


def fit_20x20(ink: np.ndarray) -> np.ndarray:
    """The cropped digit (floats in [0, 1]) scaled so that its longer side is 20 pixels, anti-aliased."""
    from PIL import Image

    h, w = ink.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = Image.fromarray(ink.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """The digit placed in 28x28 with its centre of mass on the centre pixel (MNIST's translation), uint8."""
    h, w = digit.shape
    total = digit.sum()
    cy = (digit.sum(1) @ np.arange(h)) / total
    cx = (digit.sum(0) @ np.arange(w)) / total
    canvas = np.zeros((28 + 2 * 28, 28 + 2 * 28), np.float32)  # room for any shift, cropped after
    top, left = 28 + int(round(13.5 - cy)), 28 + int(round(13.5 - cx))
    canvas[top : top + h, left : left + w] = digit
    return (canvas[28:56, 28:56] * 255.0).round().astype(np.uint8)


@dataclasses.dataclass
class Digit:
    name: str  # the file, with [i] for the i-th digit of an array or IDX file
    image: np.ndarray  # uint8 [28, 28]


def read_digits(path: str) -> list[Digit]:
    """The digits of one file: an image, an IDX image file, or a .npy array. Raises ValueError in one line."""
    file = Path(path)
    if not file.is_file():
        raise ValueError("no such file" if not file.exists() else "not a file")
    if file.suffix == ".npy":
        try:
            array = np.load(file, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"not a readable .npy array ({e})") from None
        return _digits_of(path, array)
    try:
        raw = file.read_bytes()
    except OSError as e:  # permission, an I/O error, a special file
        raise ValueError(f"cannot read it ({e.strerror})") from None
    if raw[:4] == b"\x00\x00\x08\x03":  # IDX, uint8, 3 dimensions: MNIST's image files
        try:
            return _digits_of(path, data_lib.read_idx(raw, path))
        except data_lib.DataError as e:
            raise ValueError(str(e).removeprefix(f"{path}: ")) from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image.load()
            return [Digit(path, to_mnist(image))]
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"not an image PIL can read ({type(e).__name__})") from None


def _digits_of(path: str, array: np.ndarray) -> list[Digit]:
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (28, 28):
        raise ValueError(f"expected [28, 28] or [N, 28, 28] digits, got shape {list(array.shape)}")
    if array.dtype.kind not in "uif":  # complex, bool, strings, objects: no pixel values
        raise ValueError(f"expected uint8 digits (0-255) or floats in [0, 1], got {array.dtype}")
    if array.dtype != np.uint8:
        kind, array = array.dtype, np.asarray(array, np.float32)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{kind} digits must be in [0, 1] (uint8 ones in 0-255)")
        array = (array * 255).round().astype(np.uint8)
    if len(array) == 1:
        return [Digit(path, array[0])]
    return [Digit(f"{path}[{i}]", image) for i, image in enumerate(array)]


# ------------------------------------------------------------------------------------------ the CLI
def predict(model: weights.Model, digits: list[Digit], top: int) -> list[dict]:
    probs = model.probabilities(np.stack([d.image for d in digits]))
    order = np.argsort(-probs, axis=1)[:, :top]
    return [
        {"file": d.name, "top": [{"class": int(c), "probability": float(p[c])} for c in o]}
        for d, p, o in zip(digits, probs, order)
    ]


def build_parser() -> cli.ArgumentParser:
    p = cli.script_parser("python -m jaxmnist.predict", __doc__)
    p.add_argument("images", nargs="+", help="image files (any format PIL reads), IDX image files or .npy arrays")
    weights.add_flags(p)
    compile_cache.add_flag(p)
    p.add_argument("--top", type=int, default=3, help="how many classes to print per digit (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout, for machines")
    return p


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    compile_cache.configure(args.no_compile_cache)
    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    model = weights.load(args)
    digits, failed = [], 0
    for path in args.images:
        try:
            digits += read_digits(path)
        except ValueError as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            failed += 1
    if not digits:
        raise RunError("no digit to predict")
    results = predict(model, digits, args.top)
    if args.json:
        print(json.dumps({"model": model.name, "weights": model.source, "predictions": results}, indent=1))
    else:
        print(f"{model.name} from {model.source}")
        for r in results:
            best = ", ".join(f"{t['class']} ({100 * t['probability']:.1f} %)" for t in r["top"])
            print(f"{r['file']}: {best}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
