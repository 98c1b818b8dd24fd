"""P8: images are read predictably.

Proven in test_images.py: EXIF orientation 6 (``test_exif_orientation_is_applied``), palette with
transparency and LA (``test_palette_with_transparency_and_la``), RGBA on white
(``test_transparent_canvas_is_composited_on_white_not_a_black_square``), I;16 scaled
(``test_sixteen_bit_is_scaled_not_clipped``), CMYK JPEG and every format
(``test_every_supported_format_gives_the_drawing``), animated GIF frame 0
(``test_animated_gif_uses_the_first_frame``); a JPEG cut in half in test_prepare.py
(``test_hostile_files_are_reported_one_by_one_and_the_rest_kept``). Added here: dark 16-bit images
(the bit depth comes from the file, not from the brightest pixel), the agreed CMYK result for
Adobe (inverted) JPEGs, and the cut JPEG as an ImageError through ``images.load``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, TiffImagePlugin

from mlpersonalize import images
from mlpersonalize.errors import ImageError
from mlpersonalize.images import ImageConstraint

PHOTO = ImageConstraint(8, 8, ink="none")


def _tiff(image: Image.Image, **tags: int) -> bytes:
    info = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, value in tags.items():
        info[int(tag.lstrip("t"))] = value
    buffer = io.BytesIO()
    image.save(buffer, "TIFF", tiffinfo=info)
    return buffer.getvalue()


def test_p8_dark_16_bit_image_in_mode_i_is_scaled_by_its_declared_depth() -> None:
    """A signed 16-bit TIFF opens in mode "I"; values up to 200 of 32767 are near black, not white."""
    dark = np.full((8, 8), 200, np.uint16)
    data = _tiff(Image.fromarray(dark), t339=2)  # SampleFormat: signed integer
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert images.load(data, PHOTO).max() <= 2  # 200/32767*255 ≈ 1.6, not 200


def test_p8_dark_unsigned_16_bit_is_scaled_not_treated_as_8_bit() -> None:
    dark = np.full((8, 8), 255, np.uint16)
    for data in (_tiff(Image.fromarray(dark)), _png16(dark)):
        assert images.load(data, PHOTO).max() <= 1


def _png16(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_p8_32_bit_integer_images_keep_the_agreed_rule() -> None:
    """Mode I from 32-bit data: 0..255 is 8-bit, above that 16-bit (documented in images._flatten)."""
    ramp = np.arange(64, dtype=np.int32).reshape(8, 8) * 4
    data = _tiff(Image.fromarray(ramp, "I"))
    assert abs(int(images.load(data, PHOTO).max()) - 252) <= 3


def test_p8_cmyk_jpeg_gives_the_same_gray_as_rgb() -> None:
    """The agreed result: a CMYK JPEG (Pillow writes Adobe-style) looks like its RGB original."""
    rgb = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(rgb).rectangle((16, 16, 48, 48), fill="black")
    buffer = io.BytesIO()
    rgb.convert("CMYK").save(buffer, "JPEG", quality=95)
    pixels = images.load(buffer.getvalue(), PHOTO)[:, :, 0]
    assert pixels[4, 4] < 40 and pixels[0, 0] > 215  # black square on white, not inverted


def test_p8_jpeg_cut_in_half_is_an_image_error() -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        images.load(buffer.getvalue()[: len(buffer.getvalue()) // 2], PHOTO)
