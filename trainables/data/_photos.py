"""Decoding one photo, robustly: any file either becomes a square uint8 array or a reason.

Every format Pillow reads is accepted; grayscale, palette, CMYK, 16-bit and
transparent images become RGB (transparency over white); EXIF orientation is
applied. Files that cannot be used are reported, never raised: an empty file,
a broken link, unreadable permissions, a truncated or non-image file, an
image past Pillow's decompression-bomb limit.

Example:
    >>> import io, tempfile
    >>> from PIL import Image
    >>> path = tempfile.mktemp(suffix=".png")
    >>> Image.new("LA", (10, 6)).save(path)
    >>> array, reason, digest = decode_one(path, 8)
    >>> array.shape, reason, len(digest)
    ((3, 8, 8), None, 40)
    >>> decode_one(path + ".missing.jpg", 8)[1]
    'file not found'
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Bytes a photo may take once decoded (after JPEG's reduced-scale decoding): larger ones
# are skipped before their pixels are decoded. 256 MiB: a 9,000 x 9,000 RGB photo.
MAX_DECODED_BYTES = 256 << 20
# Larger files are skipped unread: no photo is this large, a link to a device may be endless.
MAX_FILE_BYTES = 256 << 20
NOT_REGULAR = "not a regular file"
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 3, "YCbCr": 3}
_BYTES_PER_PIXEL |= {"LAB": 3, "HSV": 3} | dict.fromkeys(_HIGH_BIT_MODES[:4], 2)


class TooLargeError(ValueError):
    """A photo whose decoded pixels would exceed :data:`MAX_DECODED_BYTES`."""


def load_photo(source: str | os.PathLike[str] | bytes, size: int | None = None) -> Image.Image:
    """Open a photo (a path or its bytes) as RGB with its EXIF orientation applied.

    With ``size``, JPEG decoding may downscale (DCT scaling) to no less than
    ``size`` on each side, several times faster than a full decode.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(stream) as opened:
        if size is not None:
            opened.draft("RGB", (size, size))
        width, height = opened.size
        decoded = width * height * _BYTES_PER_PIXEL.get(opened.mode, 4)
        if decoded > MAX_DECODED_BYTES:
            raise TooLargeError(
                f"{width} x {height} {opened.mode} pixels take {decoded / 2**20:.0f} MiB decoded, "
                f"over the {MAX_DECODED_BYTES >> 20} MiB a photo may take"
            )
        img: Image.Image = ImageOps.exif_transpose(opened)
        if img.mode in _HIGH_BIT_MODES:
            img = _to_8_bit(img, size)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        return img.convert("RGB")


def _to_8_bit(img: Image.Image, size: int | None) -> Image.Image:
    """16-bit (and 32-bit int) images: 0..65535 onto 0..255; float images taken as 0..1.

    Shrunk first (box filter, in the image's own mode) to twice ``size``, then
    converted in integer (or float32) arithmetic: never a float64 copy of a large image.
    """
    if size is not None and min(img.size) > 2 * size:
        scale = 2 * size / min(img.size)
        shape = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(shape, Image.Resampling.BOX)
    values = np.asarray(img)
    if img.mode == "F":
        out = np.clip(values.astype(np.float32) * 255 + 0.5, 0, 255)
    else:
        wide = np.clip(values.astype(np.int64), 0, 65535)
        out = (wide * 255 + 32767) // 65535
    return Image.fromarray(out.astype(np.uint8))


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size``, centre crop to a square, as a CHW uint8 array."""
    img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR, centering=(0.5, 0.5))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


# One photo decoded: (CHW uint8 pixels or None, why it failed or None, SHA-1 of its bytes).
PhotoResult = tuple[np.ndarray | None, str | None, str | None]


BROKEN_LINK = "broken symbolic link"


def unreadable(exc: OSError) -> str:
    """Why a photo file could not be read, as a skip reason."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot read file: {exc.strerror or exc}"


def decode_one(path: str | os.PathLike[str], size: int) -> PhotoResult:
    """(CHW uint8 array, None, sha1 of the bytes) or (None, reason, None).

    ``path`` may be a link (a user names it), but it must lead to a regular file of at
    most ``MAX_FILE_BYTES`` (the cap ``data check`` and a search apply, see
    :func:`trainables.check_folder`), checked on the open file before it is read: a FIFO, a
    device or a sparse giant is a reason at once, never a hang or a whole read."""
    if os.path.islink(path) and not os.path.exists(path):
        return None, BROKEN_LINK, None
    try:  # O_NONBLOCK: opening a FIFO returns at once, and fstat refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None, NOT_REGULAR, None
            if info.st_size > MAX_FILE_BYTES:
                return None, f"larger than {MAX_FILE_BYTES} bytes", None
            os.set_blocking(fd, True)
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return None, unreadable(exc), None
    if len(data) > MAX_FILE_BYTES:  # it grew after its size was checked
        return None, f"larger than {MAX_FILE_BYTES} bytes", None
    return decode_bytes(data, size)


def decode_bytes(data: bytes, size: int) -> PhotoResult:
    """:func:`decode_one` of a file's bytes."""
    if not data:
        return None, "empty file (0 bytes)", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            array = resize_center_crop(load_photo(data, size), size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, f"too large for Pillow's decompression-bomb limit ({exc})", None
    except TooLargeError as exc:
        return None, f"too large: {exc}", None
    except UnidentifiedImageError:
        return None, "not an image Pillow can read (wrong extension or corrupt header)", None
    except MemoryError:
        return None, "too large to decode in this process's memory", None
    except Exception as exc:  # any other decoder failure: truncated data, bad codec state, ...
        return None, f"corrupt or truncated image ({type(exc).__name__}: {exc})", None
    return array, None, hashlib.sha1(data, usedforsecurity=False).hexdigest()


def _decode_path_job(job: tuple[str, int]) -> PhotoResult:
    return decode_one(*job)


def run_jobs(
    fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int | None = None
) -> list[Any]:
    """``fn`` of each job, in order: on up to ``workers`` processes (default: this node's
    CPUs, at most 8) when there are enough jobs to pay for them."""
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, jobs, chunksize=32))
    return [fn(job) for job in jobs]


def stack(
    results: Sequence[PhotoResult], size: int
) -> tuple[np.ndarray, dict[int, str], list[str | None]]:
    """PhotoResult photos as one ``(N, 3, size, size)`` array (zero rows where one failed), the
    reason of each failure by index, and each file's content digest."""
    out = np.zeros((len(results), 3, size, size), dtype=np.uint8)
    failures: dict[int, str] = {}
    digests: list[str | None] = []
    for i, (array, reason, digest) in enumerate(results):
        digests.append(digest)
        if array is None:
            failures[i] = reason or "unusable"
        else:
            out[i] = array
    return out, failures, digests


def decode_files(
    paths: Sequence[str | os.PathLike[str]], size: int, workers: int | None = None
) -> tuple[np.ndarray, dict[int, str], list[str | None]]:
    """Decode local photos to an ``(N, 3, size, size)`` uint8 array, on all cores (see
    :func:`stack` for what it returns). For a few photos at a time: the array is in memory."""
    return stack(run_jobs(_decode_path_job, [(os.fspath(p), size) for p in paths], workers), size)
