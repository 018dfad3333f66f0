"""Before Ray starts: the request, the weights, the photos split and decoded, what each
trial gets, and the record ``resume`` starts again from."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables import (
    AUGMENTED_VIEWS,
    FEATURE_DISK_BUDGET,
    DataError,
    Decoded,
    DecodedSplit,
    Split,
    WeightsUnavailableError,
    backbone,
    ensure_pretrained_weights,
    max_cache_bytes,
    resize_for,
    row_bytes,
    scan_folder,
    screen,
    split_screened,
)
from tuner._errors import UsageError
from tuner.search._datacheck import describe
from tuner.spaces import SearchSpace
from tuner.storage import RunRecord, Storage

Print = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class SearchRequest:
    """Everything ``search`` needs, resolved and validated by the CLI layer."""

    space: SearchSpace
    name: str
    storage: Storage
    data_dir: str  # a local folder (resolved) or a URI
    address: str | None = None
    follow_links: bool = False
    warm_start: tuple[str, ...] = ()  # earlier experiments in ``storage`` seeding the study
    verbose: bool = False  # Ray Tune's status table every 30 s, not one line per ended trial


def default_name(space: SearchSpace) -> str:
    return f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_weights(space: SearchSpace) -> None:
    """Fail before Ray starts if a pretrained model's weights cannot be had."""
    if True not in space.possible_values("pretrained"):
        return
    for model in space.possible_values("model"):
        try:
            ensure_pretrained_weights(model)
        except WeightsUnavailableError as exc:
            raise UsageError(str(exc)) from None


def activation_bytes_per_decoded_byte(space: SearchSpace) -> float:
    """The most one set of frozen activations of the space's networks can take per byte
    of decoded photos (decoded at least as large as they run): the registry's values per
    byte, for every augmented view, in float16."""
    most = max(backbone(m).activations_per_byte for m in space.possible_values("model"))
    return most * AUGMENTED_VIEWS * 2


def feature_reserve(space: SearchSpace, decoded_bytes: int) -> int:
    """Disk the space's frozen activations may take in the cache: per (depth,
    augmentation) it can draw, the activation limit or what photos of
    ``decoded_bytes`` can give, whichever is less, within the folder's LRU budget."""
    depths = [d for d in space.possible_values("freeze_depth") if d]
    if not depths or True not in space.possible_values("pretrained"):
        return 0
    combos = len(depths) * len(space.possible_values("aug_strength"))
    per_byte = activation_bytes_per_decoded_byte(space)
    per_combo = min(max_cache_bytes(), int(per_byte * decoded_bytes))
    return min(FEATURE_DISK_BUDGET, combos * per_combo)


def prepare_split(req: SearchRequest, say: Print) -> tuple[Split, DecodedSplit]:
    """Scan, decode once into the disk cache (or reuse it) and split; nothing else written."""
    resize = resize_for(max(req.space.possible_values("image_size")))
    try:
        scan = scan_folder(req.data_dir, req.follow_links)
        reserve = feature_reserve(req.space, len(scan.files) * row_bytes(resize))
        usable, decoded = screen(scan, resize, reserve=reserve, say=say)
        for line in describe(usable, most=5):
            say(line)
        split, cache = split_screened(
            usable,
            decoded,
            resize,
            val_fraction=req.space.budget.val_fraction,
            seed=req.space.budget.seed,
            test_fraction=req.space.budget.test_fraction,
        )
    except DataError as exc:
        raise UsageError(f"data: {exc}") from None
    test = (
        f"{len(split.test)} test photos (held out: no trial sees it)"
        if split.test
        else "no test split (--test-fraction 0)"
    )
    say(f"Split: {len(split.train)} train / {len(split.val)} val photos, {test}")
    say(decode_line(decoded))
    return split, cache


def decode_line(decoded: Decoded) -> str:
    """What the decode did: reused an entry, or decoded (how fast, how large, where)."""
    folder = decoded.pixels.path.parent
    size, n = decoded.pixels.size, decoded.pixels.count
    mib = decoded.pixels.nbytes / 2**20
    if decoded.reused:
        return (
            f"Decoded photos reused: {n} at {size}px in {folder} ({mib:.0f} MiB, "
            f"checked in {decoded.seconds:.1f}s)"
        )
    return (
        f"Decoded {n} photos at {size}px in {decoded.seconds:.2f}s "
        f"({n / max(decoded.seconds, 1e-9):.0f}/s) into {folder} ({mib:.0f} MiB on disk, "
        "memory-mapped by every trial on this node; later commands reuse it)"
    )


def resources_per_trial(space: SearchSpace, cluster: dict[str, float]) -> dict[str, float]:
    budget = space.budget
    cpus_available = cluster.get("CPU", 0.0)
    if budget.cpus_per_trial > cpus_available:
        raise UsageError(
            f"cpus-per-trial {budget.cpus_per_trial:g} exceeds the {cpus_available:g} CPUs "
            "available to Ray"
        )
    gpus = budget.gpus_per_trial
    gpus_available = cluster.get("GPU", 0.0)
    if gpus is None:
        # Several trials share a GPU, each the share its network's registry entry gives.
        shares = [backbone(m).gpu_share for m in space.possible_values("model")]
        gpus = max(shares) if gpus_available else 0.0
    elif gpus > gpus_available:
        raise UsageError(f"gpus-per-trial {gpus:g} exceeds the {gpus_available:g} GPUs available")
    return {"cpu": budget.cpus_per_trial, "gpu": gpus}


def trials_at_once(cluster: dict[str, float], resources: dict[str, float]) -> int:
    """How many trials the cluster runs at once (Tune then starts them all together).

    Ray Tune starts one trial at a time for a searcher unless told this number.
    """
    fits = cluster.get("CPU", 0.0) / resources["cpu"]
    if resources["gpu"]:
        fits = min(fits, cluster.get("GPU", 0.0) / resources["gpu"])
    return max(1, int(fits + 1e-9))


def run_record(
    req: SearchRequest,
    resize: int,
    resources: dict[str, float],
    warm: list[dict[str, Any]],
) -> RunRecord:
    import ray

    resolved = req.space.to_dict()
    return RunRecord(
        name=req.name,
        space_name=req.space.name,
        space_source=req.space.source,
        # Everything `resume` parses the space from: params, budget, points, strategy,
        # objectives (not the name and file, kept beside it).
        space={k: v for k, v in resolved.items() if k not in ("name", "source")},
        data_dir=req.data_dir,
        storage=req.storage.uri,
        address=req.address,
        resize=resize,
        resources=resources,
        command=" ".join(sys.argv),
        follow_links=req.follow_links,
        ray_version=ray.__version__,
        warm_start=warm,
    )
