"""Photos per forward pass on a CPU: whole batches against a few photos at a time.

A pass without gradients (frozen activations, validation, scoring, ``predict``) over
photos at 320 px: in batches of 32, every activation tensor of a batch is larger than
glibc's mmap threshold (32 MiB at most), so each one is fresh pages from the kernel,
zeroed, then unmapped again; a few photos a pass stay under it and reuse the heap. This
times EfficientNet-Lite2's stem and stages 1-3 (what ``lite-accurate``'s trials freeze)
on random photos at ``--image-size``, on 1 thread (a trial's) and on every core (a
refit's, ``predict``'s), at 32 photos a pass and at what
:func:`trainables.forward_batch` picks, with the system CPU time each spent.

Headlines: ``photos_per_s_T_B`` for T threads and B photos a pass, and
``few_per_pass_speedup_T`` for each thread count.

    uv run python benchmarks/forward_batch.py            # about a minute on 2 CPUs
    uv run python benchmarks/forward_batch.py --quick    # 64 px
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
from _common import environment_line, print_headlines

import trainables

MODEL = "efficientnet_lite2"
PHOTOS = 64


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--quick", action="store_true", help="64 px")
    return parser.parse_args()


def rate(net: torch.nn.Module, x: torch.Tensor, batch: int) -> tuple[float, float]:
    """(photos/s, system CPU seconds) of the frozen stages over ``x``, ``batch`` a pass."""

    def run() -> None:
        for i in range(0, len(x), batch):
            chunk = x[i : i + batch].contiguous(memory_format=torch.channels_last)
            trainables.run_parts(net, MODEL, chunk, 0, 4)

    with torch.no_grad():
        run()  # warm up
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run()
        after, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return len(x) / (t1 - t0), after.ru_stime - before.ru_stime


def main() -> None:
    args = parse_args()
    size = 64 if args.quick else args.image_size
    cores = len(os.sched_getaffinity(0))
    print(f"# Photos per forward pass on a CPU; {environment_line()}")
    net = trainables.build_model(MODEL, 5, pretrained=True, image_size=size).eval()
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(PHOTOS, 3, size, size, generator=torch.Generator().manual_seed(0))
    few = trainables.forward_batch(size, torch.device("cpu"), 32)
    print(f"{MODEL}, stem and stages 1-3, {size} px, {PHOTOS} photos; a few a pass: {few}")
    headlines: dict[str, float] = {}
    for threads in dict.fromkeys([1, cores]):
        torch.set_num_threads(threads)
        rates = {}
        for batch in dict.fromkeys([32, few]):
            rates[batch], sys_s = rate(net, x, batch)
            print(f"  {threads} thread(s), {batch} a pass: {rates[batch]:.1f} photos/s, "
                  f"{sys_s:.1f} s of system CPU", flush=True)  # fmt: skip
            headlines[f"photos_per_s_{threads}_{batch}"] = round(rates[batch], 1)
        headlines[f"few_per_pass_speedup_{threads}"] = round(rates[few] / rates[32], 2)
    print_headlines(headlines)


if __name__ == "__main__":
    main()
