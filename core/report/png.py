"""A minimal PNG encoder (numpy + zlib) and the colour maps of the report pictures.

No Pillow, no matplotlib, no Qt: ``core`` must render report pictures on a headless GPU
host. The encoder writes 8-bit greyscale, RGB or RGBA, non-interlaced, every scan line
with filter type 0 (None); PNG specification (W3C, 2nd ed., 2003) sections 11-12.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

from core.errors import InputError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 3: 2, 4: 6}   # channels -> PNG colour type (grey, truecolour, truecolour+alpha)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes of an image.

    Parameters
    ----------
    image : (H, W) or (H, W, 1|3|4) uint8 ndarray
        Row 0 is the top of the picture.
    compress_level : int
        zlib level 0-9.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in _COLOR_TYPE or img.shape[0] < 1 or img.shape[1] < 1:
        raise InputError(f"a PNG needs an (H, W), (H, W, 3) or (H, W, 4) image, got shape {np.shape(image)}")
    if img.dtype != np.uint8:
        raise InputError(f"a PNG image must be uint8, got {img.dtype}")
    h, w, c = img.shape
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(img).reshape(h, w * c)], axis=1)
    return (_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), compress_level))
            + _chunk(b"IEND", b""))


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# -- colour maps -----------------------------------------------------------------------------
#: Dose colour wash from low to high: blue, cyan, green, yellow, red (the "jet"-like scale
#: planning systems use, so a physician reads it without a legend lesson).
_DOSE_STOPS = np.array([[0.0, 0, 0, 200], [0.25, 0, 180, 255], [0.5, 0, 220, 0], [0.75, 255, 230, 0],
                        [1.0, 230, 0, 0]], dtype=np.float64)


def dose_colors(t: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours of values ``t`` in [0, 1] (clipped)."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    out = np.empty(t.shape + (3,))
    for k in range(3):
        out[..., k] = np.interp(t, _DOSE_STOPS[:, 0], _DOSE_STOPS[:, k + 1])
    return np.rint(out).astype(np.uint8)


def grey_window(hu: np.ndarray, level: float = 40.0, width: float = 400.0) -> np.ndarray:
    """(..., ) uint8 grey of a CT in HU through a window (default soft tissue L40/W400)."""
    lo = level - width / 2.0
    return np.rint(np.clip((np.asarray(hu, dtype=np.float64) - lo) / width, 0, 1) * 255).astype(np.uint8)


def colorbar(height: int = 200, width: int = 18) -> np.ndarray:
    """(height, width, 3) uint8 vertical dose colour bar, maximum at the top."""
    t = np.linspace(1.0, 0.0, height)
    return np.repeat(dose_colors(t)[:, None, :], width, axis=1)
