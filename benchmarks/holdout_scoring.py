"""The top trials scored on the test split together, against one at a time.

When a search ends, its top 5 trials are scored on the test photos no trial saw. One at a
time, each runs its whole network over every photo; together
(:mod:`tuner.results._together`), the trials of one model run the frozen stages they
share once per photo, then each its own later stages. This times both on the test split
of ``benchmarks/vs_recipe.py`` (val 0.2, test 0.15, ``--split-seed``), read from the
decoded photos as a search leaves them, for five trials as ``lite-accurate`` ranks them
at 320 px: two Lite2 and two Lite1 trials that trained stage 4 and the head (stages 0-3
frozen) and one head-only Lite2 trial. Their trained weights are the pretrained ones with
stage 4 and the head changed at random: the timing and the logits' agreement need no
training.

Headlines: ``one_at_a_time_s``, ``together_s``, ``together_speedup`` and
``max_logit_diff`` (the largest difference of any logit between the two: float rounding).

    uv run python benchmarks/holdout_scoring.py            # ~5 min on 2 CPUs
    uv run python benchmarks/holdout_scoring.py --quick    # same code paths, 64 px, seconds
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from _common import DEFAULT_DATA, environment_line, own_cache, print_headlines

# (model, first stage trained: 4 = stage 4 and the head, 5 = the head alone), by rank.
TRIALS = [("efficientnet_lite2", 4), ("efficientnet_lite1", 4), ("efficientnet_lite2", 4),
          ("efficientnet_lite2", 5), ("efficientnet_lite1", 4)]  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--quick", action="store_true", help="64 px, 10 photos per class")
    return parser.parse_args()


def trained(model: str, stage_from: int, seed: int, classes: int, size: int) -> object:
    """The pretrained ``model`` with the stages from ``stage_from`` on, and the head,
    changed at random (what a trial frozen below them leaves), eval mode, channels-last."""
    import torch

    import trainables

    torch.manual_seed(seed)
    net = trainables.build_model(model, classes, pretrained=True, image_size=size)
    changed = [m for group in trainables.stages(net, model)[stage_from:] for m in group]
    with torch.no_grad():
        for module in [*changed, trainables.head(net, model)]:
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return net.eval().to(memory_format=torch.channels_last)


def main() -> None:
    args = parse_args()
    cache, data_dir = own_cache(args.data, "bench-holdout-", 10 if args.quick else None)
    if args.quick:
        args.image_size = 64
    import torch

    import trainables
    from tuner.results._inference import Preprocessing, classify
    from tuner.results._together import Together

    try:
        print(f"# The top trials scored on the test split together and one at a time; "
              f"{environment_line()}, {torch.get_num_threads()} torch threads")  # fmt: skip
        resize = trainables.resize_for(args.image_size)
        split, _ = trainables.prepare_data(
            trainables.scan_folder(data_dir), resize, val_fraction=0.2, seed=args.split_seed,
            test_fraction=0.15,
        )  # fmt: skip
        paths = [p for p, _ in split.test]
        classes = len(split.classes)
        nets = [trained(m, s, i, classes, args.image_size) for i, (m, s) in enumerate(TRIALS)]
        models = [m for m, _ in TRIALS]
        preps = [Preprocessing.for_model(m, args.image_size) for m in models]
        print(f"split {args.split_seed}: {len(paths)} test photos at {args.image_size} px; "
              f"trials (model, first stage trained): {TRIALS}")  # fmt: skip

        classify(nets[0], paths[:16], preps[0], split.root)  # warm up: neither pays it
        started = time.perf_counter()
        alone = [classify(n, paths, p, split.root).logits for n, p in zip(nets, preps, strict=True)]
        one_s = time.perf_counter() - started
        print(f"  one at a time: {one_s:.1f} s", flush=True)

        started = time.perf_counter()
        joint: list[torch.Tensor | None] = [None] * len(nets)
        for prep in dict.fromkeys(preps):  # one pass per preprocessing, as score_top_trials
            index = [i for i, p in enumerate(preps) if p == prep]
            together = Together([nets[i] for i in index], [models[i] for i in index])
            result = classify(together, paths, prep, split.root)
            for i, logits in zip(index, together.split(result.logits), strict=True):
                joint[i] = logits
        together_s = time.perf_counter() - started
        print(f"  together: {together_s:.1f} s", flush=True)
        pairs = [(a, b) for a, b in zip(alone, joint, strict=True) if b is not None]
        diff = max(float((a - b).abs().max()) for a, b in pairs)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print_headlines({
        "one_at_a_time_s": round(one_s, 1),
        "together_s": round(together_s, 1),
        "together_speedup": round(one_s / together_s, 2),
        "max_logit_diff": diff,
    })  # fmt: skip


if __name__ == "__main__":
    main()
