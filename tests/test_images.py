"""The one image reader (flamediff.formats.images) and the routes that use it: the header agrees
with Pillow on every format, EXIF orientation is applied, 16-bit grey keeps its values, large
photos are downsized with a note, and a decompression bomb is refused from its header on every
route (server upload, flamediff render's check, flamediff track, the add-on's check)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from flamediff.formats.images import (MAX_DECODE_PIXELS, MAX_WORKING_SIDE, ImageFormatError, check_image_file,
                                      decode_image, read_image_header)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _upright_portrait(width: int = 60, height: int = 90) -> Image.Image:
    """Red top half, blue bottom half: which way is up is plain in the pixels."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2] = (220, 30, 30)
    pixels[height // 2:] = (30, 30, 220)
    return Image.fromarray(pixels)


def _sideways(orientation: int = 6) -> Image.Image:
    """What a phone stores for a portrait held upright with EXIF orientation 6 (rotate 90 CW to view)."""
    assert orientation == 6
    return _upright_portrait().transpose(Image.Transpose.ROTATE_90)


def _samples() -> dict[str, bytes]:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8))
    return {
        "png-rgb": _encode(rgb, "PNG"),
        "png-grey16": _encode(Image.fromarray(np.full((20, 30), 115 * 257, np.uint16)), "PNG"),
        "png-palette": _encode(rgb.convert("P"), "PNG"),
        "png-rgba-exif": _encode(rgb.convert("RGBA"), "PNG", exif=_exif(6)),
        "jpeg-exif": _encode(rgb, "JPEG", exif=_exif(8), quality=90),
        "jpeg-progressive": _encode(rgb, "JPEG", progressive=True),
        "jpeg-grey": _encode(rgb.convert("L"), "JPEG"),
        "webp-lossy": _encode(rgb, "WEBP"),
        "webp-lossless": _encode(rgb, "WEBP", lossless=True),
        "webp-alpha-exif": _encode(rgb.convert("RGBA"), "WEBP", exif=_exif(3)),
        "bmp": _encode(rgb, "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "tiff-grey16": _encode(Image.fromarray(np.full((20, 30), 115 * 257, np.uint16)), "TIFF"),
    }


@pytest.mark.parametrize("name", sorted(_samples()))
def test_the_header_agrees_with_pillow(name):
    data = _samples()[name]
    header = read_image_header(data)
    with Image.open(io.BytesIO(data)) as image:
        assert (header.width, header.height) == image.size
        assert header.format == image.format
        assert header.orientation == image.getexif().get(0x0112, 1)


def test_a_damaged_header_is_one_error_kind_never_a_crash():
    for name, data in _samples().items():
        for cut in range(0, min(len(data), 400), 7):
            try:
                read_image_header(data[:cut])
            except ImageFormatError as exc:
                assert exc.kind in ("empty", "corrupt", "format"), name
    with pytest.raises(ImageFormatError, match="not a PNG, JPEG, WebP, BMP or TIFF") as caught:
        read_image_header(b"GIF89a" + bytes(40))
    assert caught.value.kind == "format"


def test_a_sixteen_bit_grey_png_keeps_its_values():
    decoded = decode_image(_samples()["png-grey16"])
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (20, 30, 3)
    assert decoded.pixels.mean() == pytest.approx(115, abs=0.5)   # Pillow's convert("RGB") gives 255
    assert "16-bit pixels scaled to 8 bits" in decoded.notes
    assert decode_image(_samples()["tiff-grey16"]).pixels.mean() == pytest.approx(115, abs=0.5)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_turns_a_sideways_portrait_upright(fmt):
    data = _encode(_sideways(), fmt, exif=_exif(6), **({"quality": 95} if fmt == "JPEG" else {}))
    decoded = decode_image(data)
    assert decoded.pixels.shape[:2] == (90, 60)
    top, bottom = decoded.pixels[:30].mean(axis=(0, 1)), decoded.pixels[-30:].mean(axis=(0, 1))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]
    assert decoded.notes == ["turned upright by its EXIF orientation (6)"]


def test_a_phone_sized_photo_is_downsized_with_a_note_not_refused():
    data = _encode(Image.new("RGB", (6000, 4000), (120, 80, 60)), "JPEG", quality=70)
    decoded = decode_image(data)
    assert decoded.pixels.shape == (1365, MAX_WORKING_SIDE, 3)
    assert decoded.notes == [f"6000x4000 downsized to {MAX_WORKING_SIDE}x1365 (the longest side read is "
                             f"{MAX_WORKING_SIDE} px)"]
    assert decoded.pixels.mean(axis=(0, 1)) == pytest.approx((120, 80, 60), abs=3)


def _bomb_png(side: int = 50_000) -> bytes:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def test_a_decompression_bomb_is_refused_from_its_header_on_every_route(tmp_path):
    from flamediff.server.inputs import InputError, read_reference_image
    from flamediff.tracking.landmarks import TrackingError
    from flamediff.tracking.media import open_footage

    bomb = _bomb_png()
    assert len(bomb) < 200 and 50_000 ** 2 > MAX_DECODE_PIXELS
    with pytest.raises(ImageFormatError, match="more than the 80 MP") as caught:
        decode_image(bomb)
    assert caught.value.kind == "too_large"
    with pytest.raises(InputError, match="claims 50000x50000 pixels") as refused:
        read_reference_image(bomb)
    assert refused.value.status == 413
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(TrackingError, match="more than the 80 MP"):
        open_footage(str(path))
    with pytest.raises(ImageFormatError, match="more than the 80 MP"):
        check_image_file(str(path))


def test_the_server_reads_a_large_sideways_phone_photo_upright_and_says_so():
    from flamediff.server.inputs import read_reference_image

    stored = _upright_portrait(3000, 4000).transpose(Image.Transpose.ROTATE_90)   # 4000x3000 on disk
    decoded = read_reference_image(_encode(stored, "JPEG", exif=_exif(6), quality=80))
    assert decoded.pixels.shape == (MAX_WORKING_SIDE, 1536, 3) and decoded.extension == "jpg"
    assert decoded.pixels[:100].mean(axis=(0, 1))[0] > 150
    assert decoded.notes == ["turned upright by its EXIF orientation (6)",
                             f"3000x4000 downsized to 1536x{MAX_WORKING_SIDE} (the longest side read is "
                             f"{MAX_WORKING_SIDE} px)"]


def test_tracking_reads_photos_and_folders_through_the_same_reader(tmp_path):
    from flamediff.tracking.media import open_footage

    photo = tmp_path / "portrait.jpg"
    photo.write_bytes(_encode(_sideways(), "JPEG", exif=_exif(6), quality=95))
    footage = open_footage(str(photo))
    assert footage.kind == "image" and footage.size == (60, 90)
    assert footage.notes == ("portrait.jpg: turned upright by its EXIF orientation (6)",)
    (frame,) = list(footage.frames())
    assert frame.shape == (90, 60, 3) and frame[:30].mean(axis=(0, 1))[0] > 150
    folder = tmp_path / "take"
    folder.mkdir()
    for n in range(2):
        (folder / f"f{n}.png").write_bytes(_samples()["png-grey16"])
    footage = open_footage(str(folder))
    assert footage.kind == "folder" and footage.size == (30, 20)
    assert [f.mean() for f in footage.frames()] == pytest.approx([115, 115], abs=0.5)
