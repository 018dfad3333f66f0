"""The photos: a folder or bucket listed and split (``_folders``), photos decoded and
checked (``_photos``), read from a folder or an object store (``_source``), and decoded
once per node into a memory-mapped pixel file that every trial maps (``_store``).
NumPy, Pillow and pyarrow only: no torch."""

from __future__ import annotations

from trainables.data._decoded import (
    DecodedSplit,
    check_folder,
    decode_for_refit,
    decode_split,
    load_image_cache,
    prepare_data,
    screen,
    split_screened,
)
from trainables.data._folders import (
    SPLIT_FILE,
    DataError,
    FolderScan,
    Skipped,
    Split,
    make_split,
    resize_for,
    scan_folder,
)
from trainables.data._jobs import decode_rels, probe_rels
from trainables.data._photos import (
    IMAGE_EXTENSIONS,
    decode_files,
    decode_one,
    load_photo,
    resize_center_crop,
)
from trainables.data._source import PhotoSource, SourceError
from trainables.data._store import (
    CacheSpaceError,
    Decoded,
    PixelFile,
    cache_root,
    check_space,
    decode_to_disk,
    find_decoded,
    needed_bytes,
    row_bytes,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_FILE",
    "CacheSpaceError",
    "DataError",
    "Decoded",
    "DecodedSplit",
    "FolderScan",
    "PhotoSource",
    "PixelFile",
    "Skipped",
    "SourceError",
    "Split",
    "cache_root",
    "check_folder",
    "check_space",
    "decode_files",
    "decode_for_refit",
    "decode_one",
    "decode_rels",
    "decode_split",
    "decode_to_disk",
    "find_decoded",
    "load_image_cache",
    "load_photo",
    "make_split",
    "needed_bytes",
    "prepare_data",
    "probe_rels",
    "resize_center_crop",
    "resize_for",
    "row_bytes",
    "scan_folder",
    "screen",
    "split_screened",
]
