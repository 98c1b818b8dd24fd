"""The one preprocessing path: every image kind users send comes out as the model expects."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from mlpersonalize import images
from mlpersonalize.errors import ImageError
from mlpersonalize.images import ImageConstraint

GRAY = ImageConstraint(28, 28)


def ring(size: int = 120, ink: str = "black", paper: str = "white", mode: str = "RGB") -> Image.Image:
    """A circle drawn off-centre, the way a user sketches on a big canvas."""
    image = Image.new(mode, (size, size), paper)
    ImageDraw.Draw(image).ellipse((10, 20, 70, 80), outline=ink, width=6)
    return image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def reference() -> np.ndarray:
    return images.preprocess(ring(), GRAY)


def test_drawing_becomes_light_strokes_on_black_centred_and_cropped() -> None:
    pixels = reference()
    assert pixels.shape == (28, 28, 1) and pixels.dtype == np.uint8
    assert pixels[0].max() < 40 and pixels[:, 0].max() < 40, "border is background"
    assert pixels.max() > 200, "strokes are light"
    assert 0.05 < (pixels > 128).mean() < 0.5
    # cropped to the strokes: the ring fills the frame whatever its position on the canvas
    moved = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(moved).ellipse((120, 110, 180, 170), outline="black", width=6)
    assert np.abs(images.preprocess(moved, GRAY).astype(int) - pixels.astype(int)).mean() < 12


def test_light_on_dark_and_dark_on_light_give_the_same_pixels() -> None:
    dark_ink = reference()
    light_ink = images.preprocess(ring(ink="white", paper="black"), GRAY)
    assert np.abs(dark_ink.astype(int) - light_ink.astype(int)).max() <= 2


def test_transparent_canvas_is_composited_on_white_not_a_black_square() -> None:
    canvas = Image.new("RGBA", (120, 120), (0, 0, 0, 0))  # transparent *black*: the trap
    ImageDraw.Draw(canvas).ellipse((10, 20, 70, 80), outline=(0, 0, 0, 255), width=6)
    pixels = images.load(encode(canvas, "PNG"), GRAY)
    assert np.abs(pixels.astype(int) - reference().astype(int)).mean() < 3


def test_palette_with_transparency_and_la() -> None:
    palette = Image.new("P", (120, 120), 0)
    palette.putpalette([0, 0, 0, 0, 0, 0])  # entry 0: transparent black ground, entry 1: black ink
    ImageDraw.Draw(palette).ellipse((10, 20, 70, 80), outline=1, width=6)
    pixels = images.load(encode(palette, "PNG", transparency=0), GRAY)
    assert np.abs(pixels.astype(int) - reference().astype(int)).mean() < 3
    la = ring(mode="L").convert("LA")
    assert np.abs(images.load(encode(la, "PNG"), GRAY).astype(int) - reference().astype(int)).mean() < 3


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    gray = np.asarray(ring(mode="L"), dtype=np.uint16) * 257  # full 16-bit range
    image16 = Image.fromarray(gray.astype(np.uint16))
    pixels = images.load(encode(image16, "PNG"), GRAY)
    assert np.abs(pixels.astype(int) - reference().astype(int)).mean() < 3


def test_exif_orientation_is_applied() -> None:
    upright = Image.new("RGB", (120, 60), "white")
    ImageDraw.Draw(upright).line((10, 30, 110, 30), fill="black", width=6)  # horizontal bar
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    pixels = images.load(encode(upright, "JPEG", exif=exif.tobytes(), quality=95), GRAY)[:, :, 0]
    column_ink, row_ink = pixels.sum(axis=0), pixels.sum(axis=1)
    assert np.count_nonzero(row_ink > 200) > np.count_nonzero(column_ink > 200), "bar became vertical"


@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("PNG", "RGB", {"interlace": 1}),
        ("JPEG", "CMYK", {"quality": 95}),
        ("JPEG", "RGB", {"progressive": True, "quality": 95}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
        ("TIFF", "RGB", {}),
        ("WEBP", "RGB", {"quality": 95}),
        ("PNG", "1", {}),
    ],
)
def test_every_supported_format_gives_the_drawing(fmt: str, mode: str, options: dict) -> None:
    pixels = images.load(encode(ring().convert(mode), fmt, **options), GRAY)
    assert np.abs(pixels.astype(int) - reference().astype(int)).mean() < 8


def test_animated_gif_uses_the_first_frame() -> None:
    first, second = ring().convert("P"), Image.new("RGB", (120, 120), "white").convert("P")
    ImageDraw.Draw(second).rectangle((10, 10, 110, 110), outline=0, width=6)
    data = encode(first, "GIF", save_all=True, append_images=[second])
    assert np.abs(images.load(data, GRAY).astype(int) - reference().astype(int)).mean() < 8


def test_rgb_constraint_and_photo_mode_letterbox() -> None:
    photo = ImageConstraint(32, 16, color="rgb", ink="none", bias=(0.0, 0.0, 0.0))
    pixels = images.preprocess(Image.new("RGB", (100, 100), (200, 10, 10)), photo)
    assert pixels.shape == (16, 32, 3)
    assert tuple(pixels[8, 16]) == pytest.approx((200, 10, 10), abs=2)
    assert pixels[8, 0].max() == 0, "padded, not stretched"


def test_model_input_applies_scale_bias_and_layout() -> None:
    pixels = np.full((2, 4, 4, 3), 255, np.uint8)
    c = ImageConstraint(4, 4, color="rgb", ink="none", scale=1 / 127.5, bias=(-1.0, -1.0, -1.0))
    assert images.to_model_input(pixels, c).shape == (2, 3, 4, 4)
    assert np.allclose(images.to_model_input(pixels, c), 1.0)
    nhwc = ImageConstraint(4, 4, color="rgb", ink="none", layout="nhwc", bias=(0.0,))
    assert images.to_model_input(pixels, nhwc).shape == (2, 4, 4, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all", "not an image"),
        (encode(ring(), "PNG")[:200], "corrupt or truncated"),
        (encode(ring(), "JPEG")[:300], "corrupt or truncated"),
    ],
)
def test_bad_bytes_are_image_errors(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        images.load(data, GRAY)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpx, a few kB on disk
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageError, match="refused before decoding"):
        images.load(bomb, GRAY)


def test_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        images.load(tmp_path / "nope.png", GRAY)


def test_constraint_validates_when_built() -> None:
    with pytest.raises(ValueError, match="colour space"):
        ImageConstraint(28, 28, color="cmyk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        ImageConstraint(0, 28)
    assert ImageConstraint.from_dict(GRAY.to_dict()) == GRAY


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_give_pixels_or_an_image_error(data: bytes) -> None:
    try:
        assert images.load(data, GRAY).shape == (28, 28, 1)
    except ImageError:
        pass


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 4000), st.binary(min_size=1, max_size=64))
def test_damaged_png_gives_pixels_or_an_image_error(offset: int, junk: bytes) -> None:
    data = bytearray(encode(ring(), "PNG"))
    position = offset % len(data)
    data[position : position + len(junk)] = junk
    try:
        assert images.load(bytes(data), GRAY).shape == (28, 28, 1)
    except ImageError:
        pass


def test_drawing_keeps_its_aspect_and_a_margin_on_a_wide_canvas() -> None:
    wide = ImageConstraint(56, 28)
    pixels = images.preprocess(ring(), wide)[:, :, 0]
    rows, cols = np.flatnonzero(pixels.max(axis=1) > 48), np.flatnonzero(pixels.max(axis=0) > 48)
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert abs(height - width) <= 2  # a circle stays round, not stretched to the canvas
    assert rows[0] >= 2 and rows[-1] <= 25  # the 12% margin on the short side
    assert abs((cols[0] + cols[-1]) / 2 - 27.5) <= 1.5  # centred on the long side


@pytest.mark.parametrize("kind", ["file object", "descriptor"])
def test_bounded_read_reads_whole_files_and_stops_one_byte_past_the_limit(tmp_path: Path, kind: str) -> None:
    import os

    from mlpersonalize.fsio import read_bounded

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 300)

    def read(limit: int, size: int | None = None) -> bytes:
        if kind == "file object":
            with path.open("rb") as handle:
                return read_bounded(handle, limit, size)
        fd = os.open(path, os.O_RDONLY)
        try:
            return read_bounded(fd, limit, size)
        finally:
            os.close(fd)

    assert read(1000) == b"x" * 300
    assert len(read(100)) == 101  # over the limit shows as one byte more
    assert read(1000, size=100) == b"x" * 300  # grew since it was measured
    assert len(read(200, size=100)) == 201
    assert read(1000, size=500) == b"x" * 300  # shrank since it was measured


def test_large_jpeg_photo_is_decoded_at_a_reduced_scale_with_the_same_result() -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((3200, 2400))
    data = encode(photo, "JPEG", quality=95)
    constraint = ImageConstraint(28, 28, color="rgb", ink="none")
    size = images.draft_size(constraint)
    assert size is not None
    drafted = images.open_image(data, draft=size)
    assert drafted.size == (400, 300)  # 1/8 scale: still above 3x the model's side
    full = images.preprocess(images.open_image(data), constraint).astype(int)
    assert np.abs(images.load(data, constraint).astype(int) - full).mean() < 2.0


def test_small_sketch_on_a_large_jpeg_canvas_is_decoded_whole() -> None:
    data = encode(ring(size=2400).resize((3200, 2400)), "JPEG", quality=95)  # strokes: 2% of the frame
    assert images.draft_size(GRAY) is None
    assert np.array_equal(images.load(data, GRAY), images.preprocess(images.open_image(data), GRAY))
