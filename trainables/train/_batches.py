"""Batches gathered from host rows (a memory map, usually) and moved to the trial's device
ahead of the step, on a background thread."""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

_PREFETCH = 2  # batches gathered ahead of the step
# On a CPU, a pass without gradients over photos goes a few photos at a time. A batch whose
# activations are larger than glibc's mmap threshold (32 MiB at most) gets fresh pages
# from the kernel for every tensor it allocates: Lite2's stem and stages 1-3 at 320 px ran
# at 7 photos/s on one core in batches of 32, and at 27 in batches of 2, the same outputs.
CPU_BATCH_PIXELS = 2 * 320 * 320


def forward_batch(image_size: int | None, device: torch.device, default: int) -> int:
    """Photos per gradient-free forward pass on ``device`` of a network that takes
    ``image_size`` px photos: ``default`` on a GPU, or where it takes activations
    (``image_size`` None); on a CPU, at most :data:`CPU_BATCH_PIXELS` pixels (at least 1).

    >>> forward_batch(320, torch.device("cpu"), 32), forward_batch(64, torch.device("cpu"), 32)
    (2, 32)
    >>> forward_batch(320, torch.device("cuda"), 32), forward_batch(None, torch.device("cpu"), 128)
    (32, 128)
    """
    if device.type != "cpu" or image_size is None:
        return default
    return max(1, min(default, CPU_BATCH_PIXELS // (image_size * image_size)))


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor over ``array`` without a copy (a read-only map is never written)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array))


class Rows:
    """Rows ``rows`` of a host array (a memory map, usually): ``gather`` copies a batch of them."""

    def __init__(self, array: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.array = array
        self.rows = np.arange(len(array)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.source = host_tensor(array)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """A new CPU tensor of the rows at positions ``idx`` (a CPU index tensor)."""
        at = torch.from_numpy(self.rows[idx.numpy()])
        return self.source.index_select(0, at)


def stream(
    gather: Callable[[torch.Tensor], torch.Tensor],
    batches: Sequence[torch.Tensor],
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """``gather(idx)`` of each batch, on ``device``, prepared ahead on a background thread.

    On a GPU each batch is gathered into pinned memory and copied on a side
    stream without blocking; the step's stream waits for that copy alone.
    """
    cuda = device.type == "cuda"
    copies = torch.cuda.Stream(device) if cuda else None
    ready: queue.Queue[Any] = queue.Queue(maxsize=_PREFETCH)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for idx in batches:
                host = gather(idx)
                if copies is not None:
                    host = host.pin_memory()
                    with torch.cuda.stream(copies):
                        moved = host.to(device, non_blocking=True)
                        done = torch.cuda.Event()
                        done.record(copies)
                    item: Any = (moved, done)
                else:
                    item = (host.to(device), None)
                if not put(item):
                    return
            put(end)
        except BaseException as exc:  # handed to the step, raised there
            put(exc)

    worker = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            batch, done = item
            if done is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(done)
                batch.record_stream(current)
            yield batch
    finally:
        stop.set()
        worker.join()
