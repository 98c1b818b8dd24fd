"""prepare (core): folders of real, odd and hostile image files become a batch; problems are reported."""

from __future__ import annotations

import io
import os
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mlpersonalize.batch import load_batch
from mlpersonalize.decoding import decode_file
from mlpersonalize.errors import BatchError, UsageError
from mlpersonalize.images import ImageConstraint
from mlpersonalize.manifest import read_manifest
from mlpersonalize.prepare import PrepareError, prepare


def drawing(mode: str = "RGB", size: int = 64, shape: str = "circle") -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((8, 8, size - 8, size - 8), outline="black", width=4)
    else:
        pen.rectangle((10, 10, size - 10, size - 10), outline="black", width=4)
    return image.convert(mode)


def save(path: Path, image: Image.Image, fmt: str | None = None, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **options)
    return path


def rgba_on_transparent() -> Image.Image:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((8, 8, 56, 56), outline=(0, 0, 0, 255), width=4)
    return image


def sixteen_bit() -> Image.Image:
    array = np.full((64, 64), 65535, dtype=np.uint16)
    array[20:44, 20:44] = 0
    image = Image.fromarray(array)
    assert image.mode == "I;16"
    return image


def exif_rotated(path: Path) -> Path:
    image = drawing(size=64).crop((0, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(path, image, "JPEG", exif=exif.tobytes())


def animated_gif(path: Path) -> Path:
    frames = [drawing("P", shape="circle"), drawing("P", shape="square")]
    return save(path, frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header declares a huge flat image (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def every_kind(folder: Path) -> dict[str, str]:
    """Write one good file of every supported kind into ``folder``; returns name -> kind."""
    save(folder / "rgba.png", rgba_on_transparent())
    palette = drawing("P")
    save(folder / "palette.png", palette, transparency=palette.getpixel((0, 0)))  # background transparent
    save(folder / "sixteen.png", sixteen_bit())
    save(folder / "interlaced.png", drawing(), interlace=1)
    save(folder / "cmyk.jpg", drawing("CMYK"), "JPEG")
    exif_rotated(folder / "rotated.jpg")
    save(folder / "progressive.jpeg", drawing(), "JPEG", progressive=True)
    animated_gif(folder / "anim.gif")
    save(folder / "plain.bmp", drawing())
    save(folder / "plain.tiff", drawing())
    save(folder / "plain.webp", drawing(), "WEBP")
    return {p.name: p.suffix for p in folder.iterdir()}


@pytest.fixture
def manifest(tiny_model: Path):
    return read_manifest(tiny_model)


def test_every_supported_format_becomes_an_example(tmp_path: Path, manifest) -> None:
    kinds = every_kind(tmp_path / "data" / "circle")
    save(tmp_path / "data" / "square" / "sq.png", drawing(shape="square"))
    report = prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, workers=1)
    assert report.written and report.skipped == ()
    assert report.labels == {"circle": len(kinds), "square": 1}
    batch = load_batch(tmp_path / "b.npz")
    assert batch.pixels.shape == (len(kinds) + 1, 28, 28, 1)
    assert batch.model_id == manifest.model_id and batch.constraint == manifest.constraint
    assert all(p.max() > 100 for p in batch.pixels), "every example shows light strokes"


def test_hostile_files_are_reported_one_by_one_and_the_rest_kept(tmp_path: Path, manifest) -> None:
    data = tmp_path / "data"
    good = save(data / "circle" / "good.png", drawing())
    (data / "circle" / "empty.png").write_bytes(b"")
    (data / "circle" / "truncated.png").write_bytes(good.read_bytes()[:60])
    (data / "circle" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "circle" / "bomb.png").write_bytes(png_bomb())
    half = io.BytesIO()
    drawing().save(half, "JPEG")
    (data / "circle" / "half.jpg").write_bytes(half.getvalue()[: len(half.getvalue()) // 2])
    (data / "circle" / "notes.txt").write_text("hello")
    (data / "circle" / ".DS_Store").write_bytes(b"junk")
    os.mkfifo(data / "circle" / "pipe.png")  # must not hang the run
    report = prepare([data], tmp_path / "b.npz", manifest, workers=1)
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert report.written and report.labels == {"circle": 1}
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert "corrupt or truncated" in reasons["truncated.png"]
    assert "corrupt or truncated" in reasons["half.jpg"]
    assert "not an image" in reasons["corrupt.jpg"] or "corrupt" in reasons["corrupt.jpg"]
    assert "refused before decoding" in reasons["bomb.png"]
    assert reasons["notes.txt"] == "not an image file name" and reasons[".DS_Store"] == "hidden"
    assert reasons["pipe.png"] == "not a regular file"


def test_file_over_the_size_limit_is_skipped_unread(
    tmp_path: Path, manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlpersonalize import images

    data = tmp_path / "data"
    small = save(data / "circle" / "small.png", drawing(size=32))
    big = save(data / "circle" / "big.png", drawing(size=256), "PNG", compress_level=0)
    limit = (small.stat().st_size + big.stat().st_size) // 2
    monkeypatch.setattr(images, "MAX_FILE_BYTES", limit)
    report = prepare([data], tmp_path / "b.npz", manifest, workers=1)
    assert report.labels == {"circle": 1}
    [skipped] = report.skipped
    assert Path(skipped.path).name == "big.png" and skipped.reason.startswith("larger than")


def test_unicode_and_path_like_labels_are_plain_data(tmp_path: Path, manifest) -> None:
    data = tmp_path / "data"
    names = ["😀", "7️⃣", "with space", unicodedata.normalize("NFD", "café"), "up..down", "a\\b"]
    for i, name in enumerate(names):  # every image different: the same bytes under two labels is an error
        save(data / name / "deep" / "er" / "x.png", drawing(size=40 + i))
        save(data / name / f"{name}.png", drawing(size=60 + i, shape="square"))
    report = prepare([data], tmp_path / "b.npz", manifest, workers=1)
    batch = load_batch(tmp_path / "b.npz")
    assert set(report.labels) == {"😀", "7️⃣", "with space", "café", "up..down", "a\\b"}
    assert all(count == 2 for count in report.labels.values())
    assert "café/deep/er/x.png".replace("café", unicodedata.normalize("NFD", "café")) in batch.sources


def test_undecodable_file_names_are_kept_and_escaped(tmp_path: Path, manifest) -> None:
    folder = tmp_path / "data" / "circle"
    save(folder / "ok.png", drawing())
    raw = os.path.join(os.fsencode(folder), b"bad\xff.png")
    with open(raw, "wb") as handle:
        drawing(size=80).save(handle, "PNG")
    with open(os.path.join(os.fsencode(folder), b"worse\xfe.txt"), "wb") as handle:
        handle.write(b"x")
    report = prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, workers=1)
    assert "circle/bad\\xff.png" in load_batch(tmp_path / "b.npz").sources
    assert report.skipped[0].path.endswith("worse\\xfe.txt")
    report.skipped[0].path.encode("utf-8")  # valid UTF-8, no lone surrogates


def test_label_folder_with_undecodable_name_stops_the_run(tmp_path: Path, manifest) -> None:
    save(tmp_path / "data" / "circle" / "a.png", drawing())
    bad = os.path.join(os.fsencode(tmp_path / "data"), b"lab\xffel")
    os.mkdir(bad)
    save(Path(os.fsdecode(bad)) / "b.png", drawing(shape="square"))
    with pytest.raises(PrepareError, match=r"lab\\xffel: the folder name is not valid UTF-8"):
        prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, workers=1)
    assert not (tmp_path / "b.npz").exists()


def test_a_label_folder_named_unknown_is_refused_before_update_would(tmp_path: Path, manifest) -> None:
    """`predict` prints 'unknown' for a rejected drawing, so `update` refuses the label; `prepare`
    says so first (a cron job's prepare step fails, not its update), and writes nothing."""
    save(tmp_path / "data" / "circle" / "a.png", drawing())
    save(tmp_path / "data" / "unknown" / "b.png", drawing(shape="square"))
    assert "unknown" not in manifest.labels
    with pytest.raises(PrepareError, match="label 'unknown' is reserved for the predictions"):
        prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, workers=1)
    assert not (tmp_path / "b.npz").exists()


def test_links_inside_are_followed_others_are_not(tmp_path: Path, manifest) -> None:
    data = tmp_path / "data"
    save(data / "circle" / "real.png", drawing())
    save(data / "square" / "sq.png", drawing(shape="square"))
    outside = save(tmp_path / "outside.png", drawing(size=90))
    (data / "circle" / "inside-link.png").symlink_to(data / "square" / "sq.png")
    (data / "square" / "link-out.png").symlink_to(outside)
    (data / "square" / "passwd.png").symlink_to("/etc/passwd")
    (data / "square" / "loop.png").symlink_to(data / "square" / "loop.png")
    (data / "square" / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (data / "square" / "dirlink").symlink_to(data / "circle")
    (data / "linked-label").symlink_to(data / "circle")
    with pytest.raises(PrepareError, match="labelled 'circle' in .*inside-link.png and 'square' in .*sq.png"):
        prepare([data], tmp_path / "b.npz", manifest, workers=1)
    (data / "circle" / "inside-link.png").unlink()
    (data / "circle" / "z-link.png").symlink_to("real.png")
    report = prepare([data], tmp_path / "b.npz", manifest, workers=1)
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    outside_reason = "symbolic link leading outside the data folder (not followed)"
    assert reasons["link-out.png"] == reasons["passwd.png"] == outside_reason
    assert reasons["loop.png"] == "symbolic link loop (not followed)"
    assert reasons["broken.png"] == "broken symbolic link"
    assert reasons["dirlink"] == "symbolic link to a folder (not followed)"
    assert "label folders are not followed" in reasons["linked-label"]
    assert reasons["z-link.png"] == "same image as " + str(data / "circle" / "real.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_files_are_reported(tmp_path: Path, manifest) -> None:
    save(tmp_path / "data" / "circle" / "ok.png", drawing())
    locked = save(tmp_path / "data" / "circle" / "locked.png", drawing(size=80))
    locked.chmod(0)
    report = prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, workers=1)
    assert report.skipped[0].reason == "cannot read: permission denied"


def test_several_data_dirs_merge_and_duplicates_are_skipped(tmp_path: Path, manifest) -> None:
    one = save(tmp_path / "one" / "circle" / "a.png", drawing())
    save(tmp_path / "two" / "circle" / "copy.png", drawing())  # same bytes as one/circle/a.png
    save(tmp_path / "two" / "square" / "b.png", drawing(shape="square"))
    report = prepare([tmp_path / "one", tmp_path / "two"], tmp_path / "b.npz", manifest, workers=1)
    assert report.labels == {"circle": 1, "square": 1}
    assert report.skipped[0].kind == "duplicate" and report.skipped[0].reason == f"same image as {one}"


def test_same_bytes_under_two_labels_is_an_error_naming_both(tmp_path: Path, manifest) -> None:
    save(tmp_path / "data" / "circle" / "a.png", drawing())
    save(tmp_path / "data" / "square" / "b.png", drawing())
    with pytest.raises(PrepareError, match=r"'circle' in .*circle/a.png and 'square' in .*square/b.png"):
        prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, workers=1)
    assert not (tmp_path / "b.npz").exists()


def test_label_folder_without_usable_images_stops_the_run(tmp_path: Path, manifest) -> None:
    save(tmp_path / "data" / "circle" / "a.png", drawing())
    (tmp_path / "data" / "square").mkdir()
    (tmp_path / "data" / "square" / "broken.png").write_bytes(b"nope")
    with pytest.raises(PrepareError, match="square holds no usable image; no batch written") as caught:
        prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, workers=1)
    assert caught.value.report.skipped[0].path.endswith("broken.png")
    assert caught.value.exit_code == 3 and not (tmp_path / "b.npz").exists()


def test_nothing_usable_is_an_error(tmp_path: Path, manifest) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "loose.png").write_bytes(b"x")
    with pytest.raises(PrepareError, match="no usable image found in .*DATA_DIR/<label>/<image files>"):
        prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, workers=1)


def test_append_adds_new_skips_known_and_refuses_conflicts(tmp_path: Path, manifest) -> None:
    save(tmp_path / "day1" / "circle" / "a.png", drawing())
    prepare([tmp_path / "day1"], tmp_path / "b.npz", manifest, workers=1)
    save(tmp_path / "day2" / "circle" / "again.png", drawing())
    save(tmp_path / "day2" / "square" / "new.png", drawing(shape="square"))
    report = prepare([tmp_path / "day2"], tmp_path / "b.npz", manifest, append=True, workers=1)
    assert (report.examples, report.added, report.appended) == (2, 1, True)
    assert report.skipped[0].reason == "same image as circle/a.png (already in b.npz)"
    assert load_batch(tmp_path / "b.npz").labels == ("circle", "square")
    before = (tmp_path / "b.npz").read_bytes()
    save(tmp_path / "day3" / "cross" / "x.png", drawing())  # the circle again, now called cross
    with pytest.raises(PrepareError, match=r"'circle' in circle/a.png \(already in b.npz\) and 'cross'"):
        prepare([tmp_path / "day3"], tmp_path / "b.npz", manifest, append=True, workers=1)
    assert (tmp_path / "b.npz").read_bytes() == before
    again = prepare([tmp_path / "day2"], tmp_path / "b.npz", manifest, append=True, workers=1)
    assert not again.written and again.added == 0 and (tmp_path / "b.npz").read_bytes() == before


def test_append_to_a_batch_for_another_model_is_refused(tmp_path: Path, manifest) -> None:
    from dataclasses import replace

    save(tmp_path / "data" / "circle" / "a.png", drawing())
    prepare([tmp_path / "data"], tmp_path / "b.npz", replace(manifest, model_id="other", name="doodles"))
    with pytest.raises(BatchError, match="made for model 'doodles' \\(other\\), this is 'tiny'"):
        prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, append=True)


def test_output_rules(tmp_path: Path, manifest) -> None:
    save(tmp_path / "data" / "circle" / "a.png", drawing())
    (tmp_path / "b.npz").write_bytes(b"keep")
    with pytest.raises(UsageError, match="already exists; pass --force"):
        prepare([tmp_path / "data"], tmp_path / "b.npz", manifest)
    with pytest.raises(UsageError, match="cannot be used together"):
        prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, append=True, force=True)
    with pytest.raises(UsageError, match="does not exist; create it first"):
        prepare([tmp_path / "data"], tmp_path / "no" / "b.npz", manifest)
    assert (tmp_path / "b.npz").read_bytes() == b"keep"
    assert prepare([tmp_path / "data"], tmp_path / "b.npz", manifest, force=True).written


def test_parallel_decoding_gives_the_same_batch_as_in_process(tmp_path: Path, manifest) -> None:
    for i in range(80):
        label = ("circle", "square")[i % 2]
        save(tmp_path / "data" / label / f"{i:03}.png", drawing(size=40 + i, shape=label))
    (tmp_path / "data" / "circle" / "bad.png").write_bytes(b"bad")
    serial = prepare([tmp_path / "data"], tmp_path / "one.npz", manifest, workers=1)
    parallel = prepare([tmp_path / "data"], tmp_path / "two.npz", manifest, workers=2)
    assert serial.to_dict() | {"output": ""} == parallel.to_dict() | {"output": ""}
    a, b = load_batch(tmp_path / "one.npz"), load_batch(tmp_path / "two.npz")
    assert np.array_equal(a.pixels, b.pixels) and a.sources == b.sources and a.sha256 == b.sha256


def test_decode_file_matches_the_predict_path(tmp_path: Path) -> None:
    from mlpersonalize.images import load

    path = exif_rotated(tmp_path / "r.jpg")
    ok, pixels, digest = decode_file(str(path), True, ImageConstraint(28, 28))
    assert ok and np.array_equal(pixels, load(path, ImageConstraint(28, 28))) and len(digest) == 64


@pytest.mark.parametrize("read_ahead", [1, 300, 1 << 20])
def test_reading_ahead_gives_each_file_its_own_result_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_ahead: int
) -> None:
    from mlpersonalize import decoding

    paths = [str(save(tmp_path / f"{i}.png", drawing(size=30 + i))) for i in range(5)]
    (tmp_path / "bad.png").write_bytes(b"bad")
    paths[1:1] = [str(tmp_path / "bad.png"), str(tmp_path / "missing.png"), str(tmp_path)]
    tasks = [(path, True) for path in paths]
    constraint = ImageConstraint(28, 28)
    one_by_one = [decode_file(path, True, constraint) for path in paths]
    monkeypatch.setattr(decoding, "READ_AHEAD_BYTES", read_ahead)
    ahead = list(decoding.decode_files(tasks, constraint))
    assert [r[0] for r in ahead] == [True, False, False, False, True, True, True, True]
    for (ok, pixels, info), (ok1, pixels1, info1) in zip(ahead, one_by_one, strict=True):
        assert ok == ok1 and info == info1
        assert (pixels is None and pixels1 is None) or np.array_equal(pixels, pixels1)


def test_concurrent_appends_to_one_batch_lose_nothing(tiny_model: Path, tmp_path: Path) -> None:
    """Appends are serialized by a lock beside the batch: every run's examples end up in it."""
    import subprocess
    import sys

    from PIL import Image, ImageDraw

    folders = []
    for run in range(4):
        folder = tmp_path / f"data{run}" / "circle"
        folder.mkdir(parents=True)
        for n in range(3):
            image = Image.new("L", (64, 64), 255)
            ImageDraw.Draw(image).ellipse((4 + run, 4 + n, 58, 60 - run), outline=0, width=3)
            image.save(folder / f"{n}.png")
        folders.append(folder.parent)
    out = tmp_path / "b.npz"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlpersonalize",
                "prepare",
                str(f),
                "-o",
                str(out),
                "--append",
                "-m",
                str(tiny_model),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for f in folders
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert len(load_batch(out)) == 12
