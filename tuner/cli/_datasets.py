"""Where the photos come from: ``--data``, ``$TUNER_DATA``, or the cached flower set.

Without a folder the TensorFlow ``flower_photos`` archive is downloaded once
(with a progress bar), its size and SHA-256 checked against the published ones
(as TensorFlow Datasets pins them) before it is unpacked under ``$TUNER_CACHE``
(default ``~/.cache/flower-tune``), and its SHA-256 checked again on every later use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

from trainables import cache_root, settings
from tuner._errors import UsageError

FLOWERS_URL = (
    "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
)
FLOWERS_BYTES = 228_813_984  # the published size of flower_photos.tgz
# Its SHA-256, as TensorFlow Datasets pins it (tensorflow_datasets/url_checksums/tf_flowers.txt).
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
_HOW_TO = (
    "Pass a local folder of class sub-folders with --data DIR (or set $TUNER_DATA), "
    "e.g. --data ../shared/data/flowers."
)


def resolve_data_dir(data: str | None, download: bool = True) -> str:
    """The photo folder (resolved) or URI to use, downloading the default set if needed and
    allowed."""
    chosen = data or settings().data
    if chosen:
        return chosen if "://" in chosen else str(Path(chosen).expanduser().resolve())
    folder = cache_root() / "flower_photos"
    if (folder / ".complete").is_file():
        _verify_recorded_checksum(folder)
        return str(folder)
    if not download:
        raise UsageError(f"no --data given and the flower photos are not cached. {_HOW_TO}")
    return str(_download_flowers(folder))


def _download_flowers(folder: Path) -> Path:
    archive = folder.parent / "flower_photos.tgz"
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(FLOWERS_URL, archive)
    except OSError as exc:
        archive.unlink(missing_ok=True)
        raise UsageError(
            f"no --data given and the flower photos could not be downloaded from "
            f"{FLOWERS_URL} ({exc}). {_HOW_TO}"
        ) from None
    size = archive.stat().st_size
    if size != FLOWERS_BYTES:
        archive.unlink()
        raise UsageError(
            f"downloaded flower_photos.tgz has {size} bytes, expected {FLOWERS_BYTES}; "
            f"the download is damaged. Try again, or {_HOW_TO}"
        )
    digest = _sha256(archive)
    if digest != FLOWERS_SHA256:
        archive.unlink()
        raise UsageError(
            f"downloaded flower_photos.tgz has SHA-256 {digest}, expected {FLOWERS_SHA256}; "
            f"it is not the published archive. {_HOW_TO}"
        )
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    inner = staging / "flower_photos"
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(inner if inner.is_dir() else staging, folder)
    shutil.rmtree(staging, ignore_errors=True)
    (folder / ".complete").write_text("")
    return folder


def _verify_recorded_checksum(folder: Path) -> None:
    archive = folder.parent / "flower_photos.tgz"
    if archive.is_file() and _sha256(archive) != FLOWERS_SHA256:
        raise UsageError(
            f"{archive} no longer matches the published archive's SHA-256; "
            f"delete {folder.parent} to download it again, or {_HOW_TO}"
        )


def _fetch(url: str, dest: Path) -> None:
    from tqdm import tqdm

    tmp = dest.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length", 0)) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="flower_photos.tgz") as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    os.replace(tmp, dest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
