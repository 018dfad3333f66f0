"""Decoded photos on local disk: one memory-mapped file per (photo list, size, decoder).

A photo is decoded once per node into a row of a uint8 file
(``N x 3 x size x size``) under the cache folder; every trial, command and
benchmark on that node maps the same file read-only, so the page cache is
the one shared copy and the operating system, not the data set, bounds the
memory (FFCV's design). Layout under ``CACHE/decoded/``::

    KEY/pixels.u8     the rows, in the order of the photo list
    KEY/index.json    root, size, decoder version, files with (bytes, mtime_ns),
                      the files that could not be decoded (and why), content digests
    KEY.lock          held (flock) while KEY is being decoded
    KEY.partial/      a decode in progress; renamed to KEY/ only when complete

``KEY`` hashes the root, the size, the decoder version and every file's
path, size and modification time, so a changed photo makes a new entry.
An entry that holds every photo asked for (unchanged) is reused, so
``resume``, ``refit`` and later searches on the same folder decode nothing.
The decode streams: worker processes write rows straight into the file as
they decode them; no process holds more than a photo at a time. A decode
that is killed leaves a ``.partial`` folder and a released lock: the next
run removes it and decodes again.

Example:
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root, cache = pathlib.Path(tempfile.mkdtemp()), pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     Image.new("RGB", (40, 30), (i * 80, 0, 0)).save(root / f"{i}.jpg")
    >>> got = decode_to_disk(root, ["0.jpg", "1.jpg", "2.jpg"], 16, cache, quiet=True)
    >>> got.pixels.array().shape, got.reused, got.failed
    ((3, 3, 16, 16), False, {})
    >>> decode_to_disk(root, ["2.jpg", "0.jpg"], 16, cache, quiet=True).rows.tolist()
    [2, 0]
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainables._files import KIB, MIB, FileRefused, open_lock, parse_json, read_bounded
from trainables._progress import Progress
from trainables._settings import settings
from trainables.data._source import PhotoSource

# Bumped whenever decode_one would produce other pixels for the same file.
DECODER_VERSION = 1
PIXELS_FILE = "pixels.u8"
INDEX_FILE = "index.json"
HEAD_FILE = "head.json"  # version, size and root alone: read before the (large) index
INDEX_LIMIT = 1024 * MIB  # an index lists ~100 bytes a photo: ten million photos
_CHUNK = 32  # photos per worker job
_MARGIN_BYTES = 256 << 20  # left free on the cache disk


class CacheSpaceError(ValueError):
    """The decoded photos would not fit on the cache disk (message says what to change)."""


def cache_root() -> Path:
    """The cache folder: ``$TUNER_CACHE``, else ``~/.cache/flower-tune``."""
    return settings().cache_dir


def row_bytes(size: int) -> int:
    return 3 * size * size


@dataclass
class PixelFile:
    """A complete entry's rows, mapped read-only on first use (the map is not pickled)."""

    path: Path
    count: int
    size: int
    _map: np.ndarray | None = field(default=None, repr=False, compare=False)

    def array(self) -> np.ndarray:
        """The ``(count, 3, size, size)`` uint8 rows, memory-mapped."""
        if self._map is None:
            shape = (self.count, 3, self.size, self.size)
            self._map = (
                np.memmap(self.path, dtype=np.uint8, mode="r", shape=shape)
                if self.count
                else np.zeros(shape, np.uint8)
            )
        return self._map

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "count": self.count, "size": self.size, "_map": None}

    @property
    def nbytes(self) -> int:
        return self.count * row_bytes(self.size)


@dataclass(kw_only=True)
class Decoded:
    """The photos asked for, as rows of an entry: ``rows[i]`` is the row of file i
    (-1 where it could not be decoded: ``failed[i]`` says why)."""

    pixels: PixelFile
    key: str
    rows: np.ndarray
    failed: dict[int, str]
    digests: list[str | None]
    reused: bool
    seconds: float
    entry_files: list[str] = field(default_factory=list)  # the entry's rows, in order


def entry_key(root: str, size: int, files: Sequence[str], prints: Sequence[tuple[int, int]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"v{DECODER_VERSION}|{size}|{root}|{len(files)}|".encode())
    for rel, (nbytes, mtime) in zip(files, prints, strict=True):
        h.update(f"{rel}\0{nbytes}\0{mtime}\n".encode())
    return h.hexdigest()


def decoded_folder(cache_dir: Path | None = None) -> Path:
    return (cache_dir or cache_root()) / "decoded"


def needed_bytes(count: int, size: int) -> int:
    """Disk taken by ``count`` decoded photos at ``size`` px."""
    return count * row_bytes(size)


def check_space(cache_dir: Path, needed: int, what: str, advice: str) -> None:
    """Raise :class:`CacheSpaceError` if ``needed`` bytes (plus a margin) do not fit."""
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + _MARGIN_BYTES > free:
        raise CacheSpaceError(
            f"{what} need {_gib(needed)} on the cache disk ({cache_dir}), which has "
            f"{_gib(free)} free (and {_gib(_MARGIN_BYTES)} is kept free). {advice}"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _load_index(folder: Path) -> dict[str, Any] | None:
    try:
        index = parse_json(read_bounded(folder / INDEX_FILE, INDEX_LIMIT), folder / INDEX_FILE)
        pixels = folder / PIXELS_FILE
        if pixels.stat().st_size != len(index["files"]) * row_bytes(index["size"]):
            return None
        return dict(index)
    except (OSError, ValueError, KeyError, TypeError, FileRefused):
        return None


def _lookup(
    folder: Path,
    key: str,
    root: str,
    size: int,
    files: Sequence[str],
    prints: list[tuple[int, int]],
) -> Decoded | None:
    """An entry that holds every file of ``files`` unchanged: the exact one, else any."""
    others = sorted(p for p in folder.glob("*") if p.is_dir() and p.name != key)
    candidates = [folder / key, *others]
    for entry in candidates:
        if entry.suffix == ".partial":
            continue
        try:
            head = parse_json(read_bounded(entry / HEAD_FILE, 64 * KIB), entry / HEAD_FILE)
        except (OSError, FileRefused):
            continue
        if head != {"version": DECODER_VERSION, "size": size, "root": root}:
            continue
        index = _load_index(entry)
        if not index or index.get("version") != DECODER_VERSION:
            continue
        if index["size"] != size or index["root"] != root:
            continue
        where = {rel: i for i, (rel, *_rest) in enumerate(index["files"])}
        rows = np.full(len(files), -1, dtype=np.int64)
        failed: dict[int, str] = {}
        digests: list[str | None] = []
        entry_failed = {int(i): r for i, r in index["failed"].items()}
        for j, (rel, fp) in enumerate(zip(files, prints, strict=True)):
            i = where.get(rel)
            if i is None or tuple(index["files"][i][1:]) != fp:
                break
            if i in entry_failed:
                failed[j] = entry_failed[i]
            else:
                rows[j] = i
            digests.append(index["digests"][i])
        else:
            os.utime(entry / INDEX_FILE)  # recently used
            pixels = PixelFile(entry / PIXELS_FILE, len(index["files"]), size)
            entry_files = [rel for rel, *_rest in index["files"]]
            return Decoded(
                pixels=pixels,
                key=entry.name,
                rows=rows,
                failed=failed,
                digests=digests,
                reused=True,
                seconds=0.0,
                entry_files=entry_files,
            )
    return None


@contextmanager
def _locked(path: Path) -> Any:
    fd = open_lock(path)  # a shared cache folder: never through a planted link
    with os.fdopen(fd, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


Job = tuple[str, PhotoSource, int, list[tuple[int, str]]]
Result = list[tuple[int, str | None, str | None]]


def _write_rows(job: Job) -> Result:
    """Worker: decode each ``(row, path)`` and write it at its offset in the file."""
    target, source, size, items = job
    out: Result = []
    fd = os.open(target, os.O_WRONLY)
    try:
        for row, rel in items:
            array, reason, digest = source.decode(rel, size)
            if array is not None:
                os.pwrite(fd, np.ascontiguousarray(array).tobytes(), row * row_bytes(size))
            out.append((row, reason, digest))
    finally:
        os.close(fd)
    return out


def find_decoded(
    root: PhotoSource | str | os.PathLike[str],
    files: Sequence[str],
    size: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Decoded | None:
    """The rows of ``files`` in an entry that holds them all unchanged, or None: nothing
    is decoded."""
    source = root if isinstance(root, PhotoSource) else PhotoSource.parse(root)
    folder = decoded_folder(Path(cache_dir) if cache_dir else None)
    if not folder.is_dir():
        return None
    prints = source.fingerprint(files)
    key = entry_key(source.record(), size, files, prints)
    return _lookup(folder, key, source.record(), size, files, prints)


def decode_to_disk(
    root: PhotoSource | str | os.PathLike[str],
    files: Sequence[str],
    size: int,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    quiet: bool = False,
    say: Callable[[str], None] | None = None,
    reserve: int = 0,
) -> Decoded:
    """The photos ``files`` (relative to ``root``: a folder or URI) decoded at ``size`` px,
    on disk and mapped.

    Reuses an entry holding them all unchanged; otherwise checks the disk
    space first (:class:`CacheSpaceError`), then decodes on ``workers``
    processes (default: this node's CPUs, at most 8) with a progress bar
    (or a line every ~30 s when not on a terminal). ``reserve``: bytes the caller
    will also write to the cache disk, counted in the space check.
    """
    t0 = time.perf_counter()
    source = root if isinstance(root, PhotoSource) else PhotoSource.parse(root)
    where = source.record()
    folder = decoded_folder(Path(cache_dir) if cache_dir else None)
    prints = source.fingerprint(files)
    key = entry_key(where, size, files, prints)
    if folder.is_dir():
        found = _lookup(folder, key, where, size, files, prints)
        if found:
            found.seconds = time.perf_counter() - t0
            return found
    decoded = needed_bytes(len(files), size)
    what = f"{len(files)} photos decoded at {size} px ({_gib(decoded)})"
    if reserve:
        what += f" and the frozen activations kept for later trials (up to {_gib(reserve)})"
    check_space(
        folder,
        decoded + reserve,
        what,
        "Point --cache-dir (or $TUNER_CACHE) at a disk with more room, or use a smaller "
        "image_size.",
    )
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / f"{key}.lock"):
        found = _lookup(folder, key, where, size, files, prints)  # decoded meanwhile
        if found:
            found.seconds = time.perf_counter() - t0
            return found
        partial = folder / f"{key}.partial"
        if partial.is_symlink():
            partial.unlink()  # never decode into wherever a planted link points
        shutil.rmtree(partial, ignore_errors=True)  # a killed decode's leftovers
        partial.mkdir()
        target = partial / PIXELS_FILE
        with open(target, "wb") as f:
            f.truncate(needed_bytes(len(files), size))
        results = _decode_all(target, source, files, size, workers, quiet, say)
        failed = {i: r or "unusable" for i, r, _ in results if r is not None}
        digests: list[str | None] = [None] * len(files)
        for i, _, digest in results:
            digests[i] = digest
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
        index = {
            "version": DECODER_VERSION,
            "size": size,
            "root": where,
            "files": [[rel, *fp] for rel, fp in zip(files, prints, strict=True)],
            "failed": {str(i): r for i, r in sorted(failed.items())},
            "digests": digests,
            "created": time.time(),
        }
        (partial / INDEX_FILE).write_text(json.dumps(index))
        head = {"version": DECODER_VERSION, "size": size, "root": where}
        (partial / HEAD_FILE).write_text(json.dumps(head))
        shutil.rmtree(folder / key, ignore_errors=True)
        os.replace(partial, folder / key)
    rows = np.array([-1 if i in failed else i for i in range(len(files))], dtype=np.int64)
    pixels = PixelFile(folder / key / PIXELS_FILE, len(files), size)
    seconds = time.perf_counter() - t0
    return Decoded(
        pixels=pixels,
        key=key,
        rows=rows,
        failed=failed,
        digests=digests,
        reused=False,
        seconds=seconds,
        entry_files=list(files),
    )


def _decode_all(
    target: Path,
    source: PhotoSource,
    files: Sequence[str],
    size: int,
    workers: int | None,
    quiet: bool,
    say: Callable[[str], None] | None,
) -> Result:
    items = list(enumerate(files))
    jobs: list[Job] = [
        (os.fspath(target), source, size, items[s : s + _CHUNK])
        for s in range(0, len(items), _CHUNK)
    ]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    results: Result = []
    with Progress(len(files), "decoding", "photo", quiet=quiet, say=say) as progress:
        if workers <= 1 or len(jobs) <= 2:
            for job in jobs:
                results += _write_rows(job)
                progress.update(len(job[3]))
            return results
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending = {pool.submit(_write_rows, job) for job in jobs}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    part = future.result()
                    results += part
                    progress.update(len(part))
    return results
