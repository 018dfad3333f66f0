"""Many photos of a source decoded or probed at once, on a process pool: into one
in-memory array (:func:`decode_rels`) or keeping no pixels (:func:`probe_rels`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainables.data._photos import (
    PhotoResult,
    run_jobs,
    stack,
)
from trainables.data._source import PhotoSource

_PROBE_SIZE = 32  # what ``probe_rels`` decodes to (JPEGs then decode at reduced scale)


def _decode_source_job(job: tuple[PhotoSource, str, int]) -> PhotoResult:
    source, rel, size = job
    return source.decode(rel, size)


def _probe_job(job: tuple[PhotoSource, str]) -> tuple[str | None, str | None]:
    source, rel = job
    _, reason, digest = source.decode(rel, _PROBE_SIZE)
    return reason, digest


def decode_rels(
    source: PhotoSource, rels: Sequence[str], size: int, workers: int | None = None
) -> tuple[Any, dict[int, str], list[str | None]]:
    """Photos ``rels`` of ``source`` decoded at ``size`` px into one in-memory array, on all
    cores (see :func:`trainables.data._photos.stack`): for a chunk of photos at a time."""
    return stack(run_jobs(_decode_source_job, [(source, rel, size) for rel in rels], workers), size)


def probe_rels(
    source: PhotoSource, rels: Sequence[str], workers: int | None = None
) -> tuple[dict[int, str], list[str | None]]:
    """Whether each photo decodes (index -> reason for those that do not) and its digest,
    on all cores, keeping no pixels: memory does not grow with the number of files."""
    results = run_jobs(_probe_job, [(source, rel) for rel in rels], workers)
    failures = {i: reason for i, (reason, _) in enumerate(results) if reason is not None}
    return failures, [digest for _, digest in results]
