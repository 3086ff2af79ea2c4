"""The one image reader for every reference and tracking input: the header, the decode-safety
limit, EXIF orientation, 16-bit and grey pixels, and the downsizing of large photos.

Two halves, one rule. :func:`read_image_header` is plain stdlib: it reads a PNG, JPEG, WebP, BMP
or TIFF header (size, bit depth, channels, EXIF orientation) without decoding a pixel, so the
add-on can check a file inside Blender, whose Python has no Pillow, with the very limit the
backend applies. :func:`decode_image` (backend only: it imports Pillow when called) checks the
same header first, then decodes, turns the image upright, maps 16-bit / grey / palette pixels
to 8-bit RGB without clipping and downsizes anything longer than :data:`MAX_WORKING_SIDE`,
saying so in its notes. ``flamediff render``, the server's uploads and ``flamediff track`` all
read images through it, so they agree on what a file holds.

The header parser is written here rather than taken from a library because the add-on must
run without Pillow; ``tests/test_images.py`` checks it against Pillow on every format.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

#: Formats every route accepts, by header name, with the file extension a job stores them under.
IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
#: The one hard limit, checked from the header before any pixel is decoded: more pixels than
#: this would take over 240 MB to decode (a 20 kB PNG can claim 50 000 x 50 000 pixels). A
#: 48 MP phone photo (8064 x 6048) is well under it; so is Pillow's own bomb limit (89 MP).
MAX_DECODE_PIXELS = 80_000_000
#: Longer sides are downsized to this (with a note): the model crops and resizes to 128-512 px
#: and the tracker's landmarks need no more, so a phone photo is read, not refused.
MAX_WORKING_SIDE = 2048
#: Orientations 5..8 swap width and height (EXIF tag 0x0112).
_SWAPS_SIDES = frozenset((5, 6, 7, 8))
_MAX_CHUNKS = 10_000


class ImageFormatError(ValueError):
    """A file the reader refuses. ``kind``: ``empty``, ``format`` (not one of
    :data:`IMAGE_FORMATS`), ``too_large`` (over :data:`MAX_DECODE_PIXELS`) or ``corrupt``."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says: the stored size, the EXIF orientation (1 = upright)."""

    format: str
    width: int
    height: int
    bit_depth: int = 8
    channels: int = 3
    orientation: int = 1

    @property
    def upright_size(self) -> tuple[int, int]:
        """``(width, height)`` once the EXIF orientation is applied."""
        if self.orientation in _SWAPS_SIDES:
            return self.height, self.width
        return self.width, self.height

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class DecodedImage:
    """An upright ``[H, W, 3]`` uint8 image, its header and what reading it changed (notes
    without a subject: the caller says whose)."""

    pixels: NDArray[np.uint8]
    header: ImageHeader
    notes: list[str] = field(default_factory=list)

    @property
    def extension(self) -> str:
        return IMAGE_FORMATS[self.header.format]

    @property
    def scale(self) -> float:
        """Working pixels per upright source pixel (1 unless downsized)."""
        return self.pixels.shape[1] / self.header.upright_size[0]


def fitted_size(width: int, height: int, max_side: int = MAX_WORKING_SIDE) -> tuple[int, int]:
    """``(width, height)`` scaled down, aspect kept, so the long side is at most ``max_side``."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    return max(1, round(width * max_side / longest)), max(1, round(height * max_side / longest))


def check_decodable(header: ImageHeader, what: str = "the image") -> None:
    """Refuse, before decoding, an image too large to decode safely (the same limit on every route)."""
    if header.width < 1 or header.height < 1:
        raise ImageFormatError(f"{what} has no pixels ({header.width}x{header.height})", "corrupt")
    if header.pixels > MAX_DECODE_PIXELS:
        raise ImageFormatError(f"{what} claims {header.width}x{header.height} pixels, more than the "
                               f"{MAX_DECODE_PIXELS // 1_000_000} MP that can be decoded safely", "too_large")


def read_image_header(source: bytes | IO[bytes], what: str = "the image",
                      accept: Collection[str] = tuple(IMAGE_FORMATS)) -> ImageHeader:
    """The header of an image (bytes or a binary file opened at its start) in one of the formats
    ``accept`` names (:data:`IMAGE_FORMATS` keys), without decoding pixels; a file in another
    format is never parsed. Raises :class:`ImageFormatError`."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    start = stream.read(16)
    if not start:
        raise ImageFormatError(f"{what} is empty", "empty")
    stream.seek(0)
    kind = _sniff(start)
    if kind is None or kind not in accept:
        raise ImageFormatError(f"{what} is not a {format_names(accept)} file", "format")
    try:
        return _PARSERS[kind](stream)
    except (struct.error, ValueError, IndexError, OverflowError) as exc:
        if isinstance(exc, ImageFormatError):
            raise
        raise ImageFormatError(f"{what} has a damaged {kind} header ({exc.__class__.__name__})", "corrupt") from None


def format_names(accept: Collection[str]) -> str:
    """``("PNG", "JPEG", "WEBP")`` -> ``"PNG, JPEG or WebP"``."""
    names = [{"WEBP": "WebP"}.get(name, name) for name in accept]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_image_file(path: str, what: str | None = None, accept: Collection[str] = tuple(IMAGE_FORMATS)) -> ImageHeader:
    """The header of an image file the backend would decode (:func:`check_decodable`), else
    :class:`ImageFormatError`; reads only what the header needs. The add-on checks a file with it
    before sending it."""
    with open(path, "rb") as handle:
        header = read_image_header(handle, what or path, accept)
    check_decodable(header, what or path)
    return header


def _sniff(start: bytes) -> str | None:
    if start.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if start.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if start[:4] == b"RIFF" and start[8:12] == b"WEBP":
        return "WEBP"
    if start.startswith(b"BM"):
        return "BMP"
    if start[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _exact(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("truncated")
    return data


def _png(stream: IO[bytes]) -> ImageHeader:
    stream.seek(8)
    length, kind = struct.unpack(">I4s", _exact(stream, 8))
    if kind != b"IHDR" or length != 13:
        raise ValueError("no IHDR")
    width, height, depth, colour = struct.unpack(">IIBB", _exact(stream, 10))
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour)
    if channels is None:
        raise ValueError("colour type")
    stream.seek(length + 4 - 10, io.SEEK_CUR)
    orientation = 1
    for _ in range(_MAX_CHUNKS):        # eXIf comes before the pixel data (PNG 1.5)
        head = stream.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"eXIf":
            orientation = _exif_orientation(_exact(stream, length))
            stream.seek(4, io.SEEK_CUR)
        else:
            stream.seek(length + 4, io.SEEK_CUR)
    return ImageHeader("PNG", width, height, depth if colour != 3 else 8, channels, orientation)


_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _jpeg(stream: IO[bytes]) -> ImageHeader:
    stream.seek(2)
    orientation = 1
    for _ in range(_MAX_CHUNKS):
        byte = _exact(stream, 1)
        if byte != b"\xff":
            raise ValueError("marker")
        marker = _exact(stream, 1)[0]
        while marker == 0xFF:           # fill bytes
            marker = _exact(stream, 1)[0]
        if marker in (0x01, *range(0xD0, 0xD8)):
            continue                    # markers without a length
        (length,) = struct.unpack(">H", _exact(stream, 2))
        if length < 2:
            raise ValueError("segment length")
        if marker in _SOF:
            depth, height, width, channels = struct.unpack(">BHHB", _exact(stream, 6))
            return ImageHeader("JPEG", width, height, depth, channels, orientation)
        if marker == 0xDA or marker == 0xD9:
            break
        body = _exact(stream, length - 2)
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00") and orientation == 1:
            orientation = _exif_orientation(body[6:])
    raise ValueError("no frame header")


def _webp(stream: IO[bytes]) -> ImageHeader:
    stream.seek(12)
    size: tuple[int, int] | None = None
    channels, orientation = 3, 1
    for _ in range(_MAX_CHUNKS):
        head = stream.read(8)
        if len(head) < 8:
            break
        kind, length = struct.unpack("<4sI", head)
        body = _exact(stream, length)
        if length % 2:
            stream.seek(1, io.SEEK_CUR)
        if kind == b"VP8X":
            flags = body[0]
            channels = 4 if flags & 0x10 else 3
            size = (1 + int.from_bytes(body[4:7], "little"), 1 + int.from_bytes(body[7:10], "little"))
        elif kind == b"VP8 " and size is None:
            if body[3:6] != b"\x9d\x01\x2a":
                raise ValueError("VP8 start code")
            width, height = struct.unpack("<HH", body[6:10])
            return ImageHeader("WEBP", width & 0x3FFF, height & 0x3FFF, 8, 3, 1)
        elif kind == b"VP8L" and size is None:
            if body[0] != 0x2F:
                raise ValueError("VP8L signature")
            bits = int.from_bytes(body[1:5], "little")
            alpha = 4 if bits >> 28 & 1 else 3
            return ImageHeader("WEBP", (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1, 8, alpha, 1)
        elif kind == b"EXIF":
            orientation = _exif_orientation(body[6:] if body.startswith(b"Exif\x00\x00") else body)
    if size is None:
        raise ValueError("no VP8 chunk")
    return ImageHeader("WEBP", size[0], size[1], 8, channels, orientation)


def _bmp(stream: IO[bytes]) -> ImageHeader:
    stream.seek(14)
    (dib,) = struct.unpack("<I", _exact(stream, 4))
    if dib == 12:
        width, height, _, bits = struct.unpack("<HHHH", _exact(stream, 8))
    elif dib >= 40:
        width, height, _, bits = struct.unpack("<iiHH", _exact(stream, 12))
    else:
        raise ValueError("DIB header")
    return ImageHeader("BMP", abs(width), abs(height), 8, 4 if bits == 32 else 3, 1)


def _tiff(stream: IO[bytes]) -> ImageHeader:
    tags = _ifd0(stream.read(), wanted=(256, 257, 258, 277, 274))
    if 256 not in tags or 257 not in tags:
        raise ValueError("no image size")
    return ImageHeader("TIFF", tags[256], tags[257], tags.get(258, 8), tags.get(277, 1), _valid(tags.get(274, 1)))


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag of an EXIF block (a TIFF structure); 1 when absent or unreadable."""
    try:
        return _valid(_ifd0(tiff, wanted=(274,)).get(274, 1))
    except (struct.error, ValueError, IndexError):
        return 1


def _valid(orientation: int) -> int:
    return orientation if 1 <= orientation <= 8 else 1


def _ifd0(data: bytes, wanted: tuple[int, ...]) -> dict[int, int]:
    """The first value of each ``wanted`` SHORT/LONG tag in a TIFF structure's first directory."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        raise ValueError("byte order")
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset:offset + 2])
    found = {}
    for index in range(count):
        entry = data[offset + 2 + 12 * index: offset + 14 + 12 * index]
        tag, kind, _ = struct.unpack(order + "HHI", entry[:8])
        if tag in wanted:
            if kind == 3:
                (found[tag],) = struct.unpack(order + "H", entry[8:10])
            elif kind == 4:
                (found[tag],) = struct.unpack(order + "I", entry[8:12])
    return found


_PARSERS = {"PNG": _png, "JPEG": _jpeg, "WEBP": _webp, "BMP": _bmp, "TIFF": _tiff}
#: Pillow's transposes that turn each EXIF orientation upright (as ``ImageOps.exif_transpose``).
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
            7: "TRANSVERSE", 8: "ROTATE_90"}


def decode_image(data: bytes, what: str = "the image", max_side: int = MAX_WORKING_SIDE,
                 accept: Collection[str] = tuple(IMAGE_FORMATS)) -> DecodedImage:
    """Decode ``data`` (backend only: needs Pillow) to an upright 8-bit RGB image whose long side
    is at most ``max_side``, after :func:`check_decodable`. Raises :class:`ImageFormatError`."""
    import warnings

    from PIL import Image

    header = read_image_header(data, what, accept)
    check_decodable(header, what)
    upright = header.upright_size
    target = working_size(header, max_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Any = Image.open(io.BytesIO(data), formats=[header.format])
            if header.format == "JPEG" and target != upright:   # decode at 1/2, 1/4 or 1/8 scale: less memory
                stored = target if header.orientation not in _SWAPS_SIDES else target[::-1]
                image.draft("RGB", stored)
            image.load()
            rgb = _to_rgb8(image, header)
    except Exception as exc:  # truncated or corrupt pixel data: Pillow raises many types
        raise ImageFormatError(f"{what} could not be decoded ({exc.__class__.__name__}: {exc})", "corrupt") from None
    if header.orientation != 1:
        rgb = rgb.transpose(getattr(Image.Transpose, _UPRIGHT[header.orientation]))
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return DecodedImage(np.array(rgb, dtype=np.uint8), header, reading_notes(header, max_side))


def working_size(header: ImageHeader, max_side: int = MAX_WORKING_SIDE) -> tuple[int, int]:
    """The ``(width, height)`` :func:`decode_image` returns for ``header``: upright, fitted."""
    return fitted_size(*header.upright_size, max_side)


def reading_notes(header: ImageHeader, max_side: int = MAX_WORKING_SIDE) -> list[str]:
    """What :func:`decode_image` changes in an image of ``header``, one note each."""
    notes = []
    if header.orientation != 1:
        notes.append(f"turned upright by its EXIF orientation ({header.orientation})")
    upright, working = header.upright_size, working_size(header, max_side)
    if working != upright:
        notes.append(f"{upright[0]}x{upright[1]} downsized to {working[0]}x{working[1]} (the longest side read is "
                     f"{max_side} px)")
    if header.bit_depth > 8:
        notes.append(f"{header.bit_depth}-bit pixels scaled to 8 bits")
    return notes


def _to_rgb8(image: Any, header: ImageHeader) -> Any:
    """Pillow image -> 8-bit RGB. Pillow's own ``convert('RGB')`` clips 16-bit grey (mode ``I;16``
    or ``I``) at 255 instead of scaling it; here values are scaled from the header's bit depth."""
    from PIL import Image

    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" else float(2 ** max(header.bit_depth, 8) - 1)
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
