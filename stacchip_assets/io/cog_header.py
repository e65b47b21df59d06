"""Parse the header of a tiled GeoTIFF (COG) from its first bytes: what a range reader needs.

Only the full-resolution image (the first IFD) is read: size, tiling, sample layout, compression,
predictor, tile offsets and byte counts, GDAL's nodata tag and the georeferencing (pixel scale +
tie point, or a model transformation). Anything this reader does not decode bit-identically to GDAL
(JPEG/WebP/LERC compression, strips, odd bit depths, PixelIsPoint rasters, ...) raises
:class:`UnsupportedTiff`, and the caller falls back to GDAL.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from affine import Affine

#: Compression codes decoded here: none, LZW, Adobe deflate, old deflate, ZSTD.
COMPRESSIONS = {1: "none", 5: "lzw", 8: "deflate", 32946: "deflate", 50000: "zstd"}
#: (SampleFormat, BitsPerSample) -> numpy dtype char.
_DTYPES = {(1, 8): "u1", (1, 16): "u2", (1, 32): "u4", (1, 64): "u8", (2, 8): "i1", (2, 16): "i2",
           (2, 32): "i4", (2, 64): "i8", (3, 32): "f4", (3, 64): "f8"}
#: TIFF field types: struct code and size.
_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("II", 8), 6: ("b", 1), 7: ("B", 1), 8: ("h", 2),
          9: ("i", 4), 10: ("ii", 8), 11: ("f", 4), 12: ("d", 8), 16: ("Q", 8), 17: ("q", 8), 18: ("Q", 8)}
#: Bytes fetched first: GDAL's COG driver writes the whole header (ghost area + IFDs + tile arrays)
#: at the start of the file; a larger header is completed with one more request.
INITIAL_BYTES = 64 * 1024

Fetch = Callable[[int, int], bytes]  # (offset, length) -> bytes (may be short at the end of the file)


class UnsupportedTiff(Exception):
    """The file is not a TIFF this reader decodes exactly like GDAL: use GDAL instead."""


@dataclass(frozen=True)
class CogHeader:
    """Layout of the first image of a tiled TIFF."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    count: int  # bands
    dtype: np.dtype  # with the file's byte order
    compression: str
    predictor: int
    planar: int  # 1 chunky (pixel-interleaved), 2 separate planes
    offsets: np.ndarray  # int64, one per tile (per plane for planar=2), row-major
    byte_counts: np.ndarray
    nodata: float | None
    transform: Affine
    epsg: int | None = None  # ProjectedCSType / GeographicType GeoKey; None when user-defined or absent

    @property
    def tiles_across(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def tiles_down(self) -> int:
        return -(-self.height // self.tile_height)

    def tile_index(self, row: int, col: int, plane: int = 0) -> int:
        """Index into offsets/byte_counts of tile (row, col) of `plane`."""
        return plane * self.tiles_across * self.tiles_down + row * self.tiles_across + col


class _Reader:
    """Reads TIFF structures from a growing prefix of the file."""

    def __init__(self, fetch: Fetch, head: bytes) -> None:
        self.fetch = fetch
        self.data = head
        if head[:2] == b"II":
            self.bo = "<"
        elif head[:2] == b"MM":
            self.bo = ">"
        else:
            raise UnsupportedTiff("not a TIFF file")
        magic = struct.unpack(self.bo + "H", head[2:4])[0]
        if magic not in (42, 43):
            raise UnsupportedTiff("not a TIFF file")
        self.big = magic == 43

    def bytes_at(self, offset: int, length: int) -> bytes:
        end = offset + length
        if end > len(self.data):  # one more request covering what is missing (and a margin)
            more = self.fetch(len(self.data), max(end - len(self.data), INITIAL_BYTES))
            self.data += more
            if end > len(self.data):
                raise ValueError(f"the header is truncated (needs byte {end}, file has {len(self.data)})")
        return self.data[offset:end]

    def first_ifd(self) -> int:
        if self.big:
            return struct.unpack(self.bo + "Q", self.bytes_at(8, 8))[0]
        return struct.unpack(self.bo + "I", self.bytes_at(4, 4))[0]

    def ifd(self, offset: int) -> dict[int, tuple]:
        """Tag -> values of the IFD at `offset` (arrays fetched as needed)."""
        count_fmt, count_size, entry_size, inline = ("Q", 8, 20, 8) if self.big else ("H", 2, 12, 4)
        n = struct.unpack(self.bo + count_fmt, self.bytes_at(offset, count_size))[0]
        raw = self.bytes_at(offset + count_size, n * entry_size)
        tags: dict[int, tuple] = {}
        for i in range(n):
            entry = raw[i * entry_size:(i + 1) * entry_size]
            tag, typ = struct.unpack(self.bo + "HH", entry[:4])
            count = struct.unpack(self.bo + ("Q" if self.big else "I"), entry[4:4 + (8 if self.big else 4)])[0]
            if typ not in _TYPES:
                continue
            code, size = _TYPES[typ]
            total = size * count
            value = entry[-inline:]
            if total > inline:
                pointer = struct.unpack(self.bo + ("Q" if self.big else "I"), value)[0]
                value = self.bytes_at(pointer, total)
            tags[tag] = self._values(value[:total], code, count)
        return tags

    def _values(self, value: bytes, code: str, count: int) -> tuple:
        if code == "s":
            return (value.rstrip(b"\x00").decode("latin-1"),)
        if code in ("B", "H", "I", "Q", "h", "i", "q", "b", "f", "d") and count > 16:
            return tuple(np.frombuffer(value, dtype=np.dtype(self.bo + code)).tolist())
        return struct.unpack(self.bo + code * count, value)


def _one(tags: dict, tag: int, default=None):
    values = tags.get(tag)
    if values is None:
        return default
    if len(set(values)) != 1:
        raise UnsupportedTiff(f"tag {tag} differs between samples: {values}")
    return values[0]


def _transform(tags: dict) -> Affine:
    """The pixel -> model affine transform, as GDAL derives it for PixelIsArea rasters."""
    geokeys = tags.get(34735)
    if geokeys:
        for i in range(4, len(geokeys) - 3, 4):
            if geokeys[i] == 1025 and geokeys[i + 3] != 1:  # GTRasterTypeGeoKey: PixelIsPoint
                raise UnsupportedTiff("PixelIsPoint raster")
    if 34264 in tags:  # ModelTransformationTag
        m = tags[34264]
        if m[2] != 0 or m[6] != 0:
            raise UnsupportedTiff("3-D model transformation")
        return Affine(m[0], m[1], m[3], m[4], m[5], m[7])
    if 33550 in tags and 33922 in tags:
        sx, sy = tags[33550][:2]
        tie = tags[33922]
        if len(tie) != 6:
            raise UnsupportedTiff("several tie points")
        i, j, _, x, y, _ = tie
        return Affine(sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    raise UnsupportedTiff("no georeferencing tags")


def _epsg(tags: dict) -> int | None:
    """The EPSG code of the GeoKey directory (ProjectedCSTypeGeoKey 3072, else GeographicTypeGeoKey
    2048), None for a user-defined CRS (32767) or no keys: the caller then compares no file CRS."""
    geokeys = tags.get(34735) or ()
    found = {geokeys[i]: geokeys[i + 3] for i in range(4, len(geokeys) - 3, 4) if geokeys[i + 1] == 0}
    for key in (3072, 2048):
        code = found.get(key)
        if code and code != 32767:
            return int(code)
    return None


def parse_header(fetch: Fetch) -> CogHeader:
    """The layout of the first image of the TIFF read through `fetch`; UnsupportedTiff if this
    reader cannot decode it exactly like GDAL; ValueError if the header is truncated or corrupt."""
    head = fetch(0, INITIAL_BYTES)
    if len(head) < 16:
        if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            raise ValueError(f"the file is truncated ({len(head)} bytes)")
        raise UnsupportedTiff("not a TIFF file")
    reader = _Reader(fetch, head)
    try:
        tags = reader.ifd(reader.first_ifd())
    except struct.error as exc:
        raise ValueError(f"corrupt TIFF header: {exc}") from exc
    if 322 not in tags or 324 not in tags:
        raise UnsupportedTiff("not tiled")
    compression = int(_one(tags, 259, 1))
    if compression not in COMPRESSIONS:
        raise UnsupportedTiff(f"compression {compression}")
    spp = int(_one(tags, 277, 1))
    bits = int(_one(tags, 258, 1))
    fmt = int(_one(tags, 339, 1))
    if (fmt, bits) not in _DTYPES:
        raise UnsupportedTiff(f"sample format {fmt} with {bits} bits")
    predictor = int(_one(tags, 317, 1))
    if predictor not in (1, 2, 3) or (predictor == 3 and fmt != 3) or (predictor == 2 and fmt == 3):
        raise UnsupportedTiff(f"predictor {predictor} for sample format {fmt}")
    planar = int(_one(tags, 284, 1))
    if 330 in tags:  # SubIFDs
        raise UnsupportedTiff("SubIFDs")
    if int(_one(tags, 262, 1)) == 6:  # YCbCr
        raise UnsupportedTiff("YCbCr")
    width, height = int(tags[256][0]), int(tags[257][0])
    tw, th = int(tags[322][0]), int(tags[323][0])
    offsets = np.asarray(tags[324], dtype=np.int64)
    counts = np.asarray(tags[325], dtype=np.int64)
    planes = spp if planar == 2 else 1
    expected = planes * (-(-width // tw)) * (-(-height // th))
    if len(offsets) != expected or len(counts) != expected:
        raise ValueError(f"corrupt TIFF header: {len(offsets)} tile offsets for {expected} tiles")
    nodata = None
    if 42113 in tags:
        text = str(tags[42113][0]).strip()
        try:
            nodata = float(text)
        except ValueError:
            raise UnsupportedTiff(f"nodata {text!r}") from None
    dtype = np.dtype(reader.bo + _DTYPES[(fmt, bits)])
    return CogHeader(width, height, tw, th, spp, dtype, COMPRESSIONS[compression], predictor, planar, offsets,
                     counts, nodata, _transform(tags), _epsg(tags))
