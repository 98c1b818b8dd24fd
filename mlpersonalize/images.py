"""Decode an image file and bring it to a model's image constraint.

This is the one preprocessing path: `prepare` (training data), `predict` and the sample model's
pretraining all call :func:`preprocess`, so training and prediction never see different pixels.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError
from .fsio import describe_os_error, read_bounded

# Decoders we trust and users need; anything else is refused before a plugin parses it.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".jfif"})
MAX_PIXELS = 40_000_000  # refuse larger images before decoding (decompression bombs)
MAX_FILE_BYTES = 100 * 1024 * 1024
EXIF_ORIENTATION = 0x0112

Color = Literal["gray", "rgb"]
Ink = Literal["light", "dark", "none"]
Layout = Literal["nchw", "nhwc"]


@dataclass(frozen=True)
class ImageConstraint:
    """What the model's image input must look like (like Core ML's MLImageConstraint).

    ``ink`` is the stroke polarity a drawing model was trained on: "light" strokes on a dark
    ground (MNIST, Quick, Draw!), "dark" on light, or "none" for photos. For drawings the
    preprocessing crops to the strokes and normalises polarity to match.
    Pixel values fed to the model are ``uint8 * scale + bias[channel]``.
    """

    width: int
    height: int
    color: Color = "gray"
    scale: float = 1.0 / 255.0
    bias: tuple[float, ...] = (0.0,)
    ink: Ink = "light"
    layout: Layout = "nchw"

    def __post_init__(self) -> None:
        if not (1 <= self.width <= 4096 and 1 <= self.height <= 4096):
            raise ValueError(f"image size {self.width}x{self.height} is out of range 1..4096")
        if self.color not in ("gray", "rgb"):
            raise ValueError(f"colour space must be gray or rgb, not {self.color!r}")
        if self.ink not in ("light", "dark", "none"):
            raise ValueError(f"ink must be light, dark or none, not {self.ink!r}")
        if self.layout not in ("nchw", "nhwc"):
            raise ValueError(f"layout must be nchw or nhwc, not {self.layout!r}")
        if len(self.bias) not in (1, self.channels):
            raise ValueError(f"bias needs 1 or {self.channels} values, got {len(self.bias)}")
        if not np.isfinite(self.scale) or self.scale == 0:
            raise ValueError("scale must be a finite non-zero number")

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed example as stored in a batch: (height, width, channels)."""
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, object]:
        return {
            "width": self.width,
            "height": self.height,
            "color": self.color,
            "scale": self.scale,
            "bias": list(self.bias),
            "ink": self.ink,
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ImageConstraint:
        bias = data.get("bias", [0.0])
        if not isinstance(bias, list):
            raise ValueError("bias must be a list of numbers")
        return cls(
            width=int(data["width"]),  # type: ignore[call-overload]
            height=int(data["height"]),  # type: ignore[call-overload]
            color=data.get("color", "gray"),  # type: ignore[arg-type]
            scale=float(data.get("scale", 1.0 / 255.0)),  # type: ignore[arg-type]
            bias=tuple(float(b) for b in bias),
            ink=data.get("ink", "light"),  # type: ignore[arg-type]
            layout=data.get("layout", "nchw"),  # type: ignore[arg-type]
        )


def is_image_name(path: Path | str) -> bool:
    name = os.path.basename(path)
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES  # os.path: a tenth of Path(...).suffix


def read_image_file(path: Path | str, nofollow: bool = False) -> bytes:
    """A regular file's bytes; ImageError (the reason alone, no name) for anything else.

    Opened non-blocking, so a FIFO or device named like an image is refused instead of hanging
    the run; with ``nofollow`` a final symbolic link is not followed either.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ImageError("not a regular file")
            if info.st_size > MAX_FILE_BYTES:
                raise ImageError(f"larger than {MAX_FILE_BYTES // 1024**2} MiB")
            data = read_bounded(fd, MAX_FILE_BYTES, info.st_size)  # the descriptor: no file object
        finally:
            os.close(fd)
    except OSError as exc:
        raise ImageError(f"cannot read: {describe_os_error(exc)}") from exc
    if not data:
        raise ImageError("empty file (0 bytes)")
    return data


def open_image(source: Path | str | bytes, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``source`` fully, refusing bombs, unknown formats and corrupt data with ImageError.

    The result has EXIF orientation applied and the first frame of an animation. With ``draft``
    a JPEG is decoded at the smallest of 1/2, 1/4 or 1/8 scale that stays at least that size
    (a 4000x3000 photo: 25 ms instead of 137 ms here). Errors read "PATH: reason" for a file
    and the reason alone for bytes.
    """
    if isinstance(source, bytes):
        return _decode(source, draft)
    try:
        return _decode(read_image_file(source), draft)
    except ImageError as exc:
        raise ImageError(f"{source}: {exc}") from exc


def _decode(data: bytes, draft: tuple[int, int] | None) -> Image.Image:
    if not data:
        raise ImageError("empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{width}x{height} pixels, more than the limit of {MAX_PIXELS:,}; refused before decoding"
                )
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            if draft is not None and image.format == "JPEG":
                image.draft(None, draft)
            image.load()
            bits = _declared_bits(image)
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
                image = ImageOps.exif_transpose(image) or image
            if bits:
                image.info[_BITS] = bits  # a transposed copy has lost the tags the depth came from
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"declares more than {MAX_PIXELS:,} pixels (a decompression bomb?); refused before decoding"
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"not an image in a supported format ({', '.join(FORMATS)})") from exc
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError) as exc:
        raise ImageError(f"corrupt or truncated: {exc}") from exc
    except (MemoryError, RecursionError, ZeroDivisionError, OverflowError, AttributeError) as exc:
        raise ImageError(f"could not be decoded: {type(exc).__name__}") from exc
    return image


_BITS = "mlpersonalize.bits"  # (bits per sample, signed) as the file declares them


def _declared_bits(image: Image.Image) -> tuple[int, bool] | None:
    """The integer sample depth a TIFF declares (mode "I" hides it: 16-bit signed opens as "I")."""
    tags = getattr(image, "tag_v2", None)
    if tags is None or image.mode != "I":
        return None
    try:
        bits = int(tags.get(258, (0,))[0])
        signed = int(tags.get(339, (1,))[0]) == 2
    except (TypeError, ValueError, IndexError):
        return None
    return (bits, signed) if 1 < bits <= 32 else None


def _flatten(image: Image.Image) -> Image.Image:
    """RGB or L with transparency composited on white, 16-bit scaled to 8-bit, CMYK to RGB.

    Integer images scale by their declared depth (a dark 16-bit image stays dark); mode "I"
    without one (32-bit data) is read as 8-bit if no value exceeds 255, else as 16-bit.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        declared = image.info.get(_BITS)
        if mode.startswith("I;16"):
            top = 65535.0
        elif declared and declared[0] <= 16:
            top = float(2 ** (declared[0] - declared[1]) - 1)
        else:
            top = 65535.0 if array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        top = 1.0 if array.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("L", "RGB"):
        return image
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def _fit(image: Image.Image, width: int, height: int, fill: int | tuple[int, ...]) -> Image.Image:
    """Scale to fit inside width x height keeping the aspect ratio, centred, padded with fill."""
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new(image.mode, (width, height), fill)
    canvas.paste(resized, ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


INK_THRESHOLD = 48  # stroke strength (0-255) that counts when cropping to the strokes
DRAWING_MARGIN = 0.12  # of the strokes' longer side, on each side
# Box-reduce to within 2x of the target (Pillow's thumbnail default), then bicubic: about 35 us
# for a 256-pixel drawing's strokes, where the padded square with LANCZOS after a 3x reduce took
# about 100 us (LANCZOS alone, 100 -> 28 pixels: 68 us). The pixels differ by 1.3 levels on
# average, and the bundled model is trained on these.
DRAWING_REDUCING_GAP = 2.0
DRAWING_RESAMPLE = Image.Resampling.BICUBIC


def _median_level(levels: np.ndarray) -> int:
    """``int(np.median(levels))`` for uint8 levels, by partial sort (np.median: 4x slower)."""
    middle = len(levels) // 2
    if len(levels) % 2:
        return int(np.partition(levels, middle)[middle])
    low, high = np.partition(levels, (middle - 1, middle))[middle - 1 : middle + 1]
    return (int(low) + int(high)) // 2


@functools.cache  # one entry per background level: at most 256
def _ink_table(background: int) -> tuple[np.ndarray, int, int]:
    """Gray level -> stroke strength (uint8), and the levels ``low..high`` that are ground.

    Strength is the distance from the background stretched to 0..255, so light-on-dark and
    dark-on-light drawings come out the same. A level is a stroke when its strength exceeds
    INK_THRESHOLD, i.e. when it lies at least ``reach`` levels from the background.
    """
    span = max(1, background, 255 - background)
    strength = np.abs(np.arange(256) - background) * 255.0 / span
    reach = INK_THRESHOLD * span // 255 + 1
    low, high = max(0, background - reach + 1), min(255, background + reach - 1)
    return np.minimum(255, strength).astype(np.uint8), low, high


def _strokes_box(pixels: np.ndarray, low: int, high: int) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the levels outside ``low..high``; None if there are none.

    One comparison over the image (two on a mid-gray ground), then Pillow's bounding box of the
    mask: 17 us for a 256-pixel drawing, where two comparisons and numpy's ``any`` along the
    rows and the columns took 28.
    """
    if low == 0:  # a dark ground: only lighter levels are strokes
        mask = np.greater(pixels, high)
    elif high == 255:  # a light ground
        mask = np.less(pixels, low)
    else:  # uint8 wraps around: levels below ``low`` land above ``high - low`` as the ones above do
        mask = np.greater(pixels - np.uint8(low), high - low)
    height, width = mask.shape
    return Image.frombuffer("L", (width, height), mask.view(np.uint8), "raw", "L", 0, 1).getbbox()


def _strength(pixels: np.ndarray, background: int, table: np.ndarray) -> np.ndarray:
    """``table[pixels]``; the two common grounds, black and white, without the 5x slower lookup."""
    if background == 0:  # the table is the identity
        return pixels
    if background == 255:  # the table is 255 - level
        return 255 - pixels
    return table.take(pixels)  # half the time of table[pixels], which makes an index array


def _drawing(image: Image.Image, constraint: ImageConstraint) -> np.ndarray:
    """A drawing: strokes made light on dark, cropped to the strokes, fitted with a margin.

    The strokes' box is scaled as if it sat in a square with a 12% margin on each side and
    centred on the model's canvas; only the strokes are resampled (the margin is never drawn).
    """
    pixels = np.asarray(image if image.mode == "L" else image.convert("L"))
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = _median_level(border)
    table, low, high = _ink_table(background)
    box = _strokes_box(pixels, low, high)
    if box is not None:
        left, top, right, bottom = box
        pixels = pixels[top:bottom, left:right]
    ink = np.ascontiguousarray(_strength(pixels, background, table))
    height, width = ink.shape
    side = max(width, height)
    scale = min(constraint.width, constraint.height) / (side + 2 * max(1, round(side * DRAWING_MARGIN)))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    strokes = Image.frombuffer("L", (width, height), ink, "raw", "L", 0, 1)  # shares ink's memory
    resized = strokes.resize(size, DRAWING_RESAMPLE, reducing_gap=DRAWING_REDUCING_GAP)
    # what pasting onto a black canvas gives, without a canvas image and a copy out of it
    out = np.zeros((constraint.height, constraint.width), dtype=np.uint8)
    x, y = (constraint.width - size[0]) // 2, (constraint.height - size[1]) // 2
    # tobytes, not asarray: the array interface costs 4 us on a 20-pixel image
    out[y : y + size[1], x : x + size[0]] = np.frombuffer(resized.tobytes(), np.uint8).reshape(size[::-1])
    if constraint.ink == "dark":
        out = 255 - out
    if constraint.color == "rgb":
        out = np.repeat(out[:, :, None], 3, axis=2)
    return out.reshape(constraint.shape)


def preprocess(image: Image.Image, constraint: ImageConstraint) -> np.ndarray:
    """Pixels of ``image`` as the model expects them: uint8 of shape (height, width, channels)."""
    flat = _flatten(image)
    if constraint.ink != "none":
        return _drawing(flat, constraint)
    if constraint.color == "gray":
        fitted = _fit(flat.convert("L"), constraint.width, constraint.height, 0)
    else:
        fitted = _fit(flat.convert("RGB"), constraint.width, constraint.height, (0, 0, 0))
    return np.asarray(fitted, dtype=np.uint8).reshape(constraint.shape)


def draft_size(constraint: ImageConstraint) -> tuple[int, int] | None:
    """The least size worth decoding for ``constraint``, whatever the image's orientation.

    A photo is fitted whole: 3x the model's side keeps the fit's box reduce exact. A drawing is
    cropped to its strokes, which may be a small sketch on a large canvas: always decoded whole.
    """
    if constraint.ink != "none":
        return None
    side = 3 * max(constraint.width, constraint.height)
    return (side, side)


def load(source: Path | str | bytes, constraint: ImageConstraint) -> np.ndarray:
    """Decode a file (or its bytes) and preprocess it: the path every image takes."""
    image = open_image(source, draft=draft_size(constraint))
    try:
        return preprocess(image, constraint)
    except (OSError, ValueError, MemoryError) as exc:
        reason = f"could not be preprocessed: {exc}"
        raise ImageError(reason if isinstance(source, bytes) else f"{source}: {reason}") from exc


def to_model_input(pixels: np.ndarray, constraint: ImageConstraint) -> np.ndarray:
    """uint8 examples (N, H, W, C) to the float32 tensor the model takes (NCHW or NHWC)."""
    x = pixels.astype(np.float32) * np.float32(constraint.scale)
    x += np.asarray(constraint.bias, dtype=np.float32)
    if constraint.layout == "nchw":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x
