"""PNG by hand: a decoder and an encoder on zlib (stdlib), no imaging library.

Decoded: non-interlaced PNGs of 8-bit gray (color type 0, also 1/2/4 bits, scaled to 0-255),
RGB (2), palette (3, 1/2/4/8 bits; RGBA when a tRNS chunk gives alpha), gray + alpha (4)
and RGBA (6), with all five row filters (None, Sub, Up, Average, Paeth, PNG spec 9.2).
Refused in one line: 16-bit samples, interlacing, a broken signature, chunk or stream.
Returned: uint8 (H, W) for gray, (H, W, C) with C in 2, 3, 4 otherwise.

The encoder writes (H, W) or (H, W, C) uint8 with C in 1-4, every row with one chosen
filter (the tests use it to produce each filter type), atomically.
"""

import struct
import zlib

import numpy as np

from fm_numpy.io import atomic_path

__all__ = ["PNG_SIGNATURE", "read_png", "decode_png", "write_png", "encode_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # color type -> samples per pixel


def read_png(path):
    """Decode the PNG file at path into a uint8 array (see the module docstring)."""
    with open(path, "rb") as f:
        blob = f.read()
    try:
        return decode_png(blob)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _chunks(blob):
    """(type, data) of each chunk after the signature, checking lengths and CRCs."""
    pos = len(PNG_SIGNATURE)
    while pos < len(blob):
        if pos + 8 > len(blob):
            raise ValueError("truncated PNG chunk header")
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        data = blob[pos + 8:pos + 8 + length]
        crc = blob[pos + 8 + length:pos + 12 + length]
        if len(data) != length or len(crc) != 4:
            raise ValueError(f"truncated PNG chunk {kind!r}")
        if zlib.crc32(kind + data) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"PNG chunk {kind!r} fails its CRC check")
        yield kind, data
        if kind == b"IEND":
            return
        pos += 12 + length
    raise ValueError("PNG ends without an IEND chunk")


def decode_png(blob):
    """Decode PNG bytes into a uint8 array (H, W) or (H, W, C)."""
    if not blob.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    header, palette, alpha, idat = None, None, None, []
    for kind, data in _chunks(blob):
        if kind == b"IHDR":
            if len(data) != 13:
                raise ValueError("PNG IHDR chunk has the wrong length")
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"PLTE":
            palette = np.frombuffer(data, np.uint8).reshape(-1, 3)  # (K, 3)
        elif kind == b"tRNS":
            alpha = np.frombuffer(data, np.uint8)
        elif kind == b"IDAT":
            idat.append(data)
    if header is None:
        raise ValueError("PNG has no IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    if color not in _CHANNELS or width == 0 or height == 0:
        raise ValueError(f"PNG header is invalid (color type {color}, size {width}x{height})")
    if depth == 16:
        raise ValueError("16-bit PNGs are not supported: save the images with 8 bits a sample")
    if depth not in (1, 2, 4, 8) or (depth != 8 and color not in (0, 3)):
        raise ValueError(f"PNG bit depth {depth} is invalid for color type {color}")
    if interlace:
        raise ValueError("interlaced PNGs are not supported: save the images non-interlaced")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise ValueError(f"PNG image data do not decompress ({e})") from None
    channels = _CHANNELS[color]
    row_bytes = (width * channels * depth + 7) // 8
    if len(raw) != height * (row_bytes + 1):
        raise ValueError(f"PNG image data hold {len(raw)} bytes, expected "
                         f"{height * (row_bytes + 1)}")
    rows = _unfilter(raw, height, row_bytes, max(1, channels * depth // 8))  # (H, row_bytes)
    if depth < 8:  # unpack 1/2/4-bit samples, most significant first
        bits = np.unpackbits(rows, axis=1).reshape(height, -1, depth)  # (H, 8 row_bytes/d, d)
        rows = (bits * (1 << np.arange(depth - 1, -1, -1, dtype=np.uint8))).sum(2)
        rows = rows[:, :width].astype(np.uint8)  # (H, W) sample values 0..2^d - 1
        if color == 0:
            rows = rows * np.uint8(255 // ((1 << depth) - 1))  # gray scaled to 0..255
    image = rows.reshape(height, width, channels)  # (H, W, C)
    if color == 3:
        if palette is None:
            raise ValueError("palette PNG has no PLTE chunk")
        if image.max() >= len(palette):
            raise ValueError("PNG palette index out of range")
        index = image[..., 0]
        image = palette[index]  # (H, W, 3)
        if alpha is not None:
            table = np.full(len(palette), 255, np.uint8)
            table[:len(alpha)] = alpha[:len(palette)]
            image = np.concatenate([image, table[index][..., None]], axis=2)  # (H, W, 4)
    return image[..., 0] if image.shape[2] == 1 else image


def _unfilter(raw, height, row_bytes, bpp):
    """Undo the per-row filters (PNG spec 9.2); bpp = bytes per complete pixel (>= 1)."""
    data = np.frombuffer(raw, np.uint8).reshape(height, row_bytes + 1)
    out = np.zeros((height, row_bytes), np.uint8)
    prev = np.zeros(row_bytes, np.uint8)
    for r in range(height):
        kind, line = data[r, 0], data[r, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # Sub: a running sum mod 256 along each byte position of a pixel
            cur = _sub_inverse(line, bpp)
        elif kind == 2:  # Up
            cur = line + prev
        elif kind in (3, 4):  # Average, Paeth: each byte needs its left neighbour, in order
            cur = _sequential(line, prev, bpp, kind)
        else:
            raise ValueError(f"PNG row {r} has unknown filter type {kind}")
        out[r] = cur
        prev = cur
    return out


def _sub_inverse(line, bpp):
    n = len(line)
    padded = np.zeros(-(-n // bpp) * bpp, np.uint8)
    padded[:n] = line
    return np.cumsum(padded.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)[:n]


def _sequential(line, prev, bpp, kind):
    cur = bytearray(line.tobytes())
    up = prev.tobytes()
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = up[i]
        if kind == 3:
            cur[i] = (cur[i] + ((a + b) >> 1)) & 0xFF
        else:
            c = up[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (cur[i] + pred) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)


def _filter_row(line, prev, bpp, kind):
    """Apply filter `kind` to one row (the inverse of _unfilter's step)."""
    x, b = line.astype(np.int64), prev.astype(np.int64)
    a = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
    c = np.concatenate([np.zeros(bpp, np.int64), b[:-bpp]])
    if kind == 0:
        pred = np.zeros_like(x)
    elif kind == 1:
        pred = a
    elif kind == 2:
        pred = b
    elif kind == 3:
        pred = (a + b) >> 1
    else:
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return ((x - pred) & 0xFF).astype(np.uint8)


def encode_png(image, filter_type=0):
    """PNG bytes of a uint8 image (H, W) or (H, W, C), C in 1-4, every row filtered alike."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or 0 in image.shape:
        raise ValueError(f"a PNG needs a uint8 (H, W) or (H, W, C) array, got {image.dtype} "
                         f"{image.shape}")
    if image.ndim == 2:
        image = image[..., None]
    height, width, channels = image.shape
    if channels not in (1, 2, 3, 4) or filter_type not in range(5):
        raise ValueError(f"channels must be 1-4 and the filter 0-4, got {channels}, "
                         f"{filter_type}")
    color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = image.reshape(height, width * channels)
    prev = np.zeros(width * channels, np.uint8)
    lines = []
    for line in rows:
        lines.append(bytes([filter_type]) + _filter_row(line, prev, channels, filter_type)
                     .tobytes())
        prev = line

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(lines)))
            + chunk(b"IEND", b""))


def write_png(path, image, filter_type=0):
    """Write a uint8 image as a PNG file atomically."""
    blob = encode_png(image, filter_type)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(blob)
