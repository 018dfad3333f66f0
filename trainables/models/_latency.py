"""What a trial's model costs where it is deployed: its latency and its size.

``latency_ms`` is the time the deployed graph (:class:`trainables.models._deploy.Deployed`:
uint8 photo in, probabilities out) takes for one photo at the trial's
``image_size``. On ``cpu`` the graph is the ONNX file ``export`` writes, run by
onnxruntime on one thread (the thread a one-CPU trial holds, and what a
CPU behind an API gives each request), after :data:`WARMUP` runs, as the median
of at least :data:`MIN_RUNS` runs and :data:`MIN_SECONDS` seconds of that thread's
CPU time: trials run side by side, and the wall-clock time of a run includes the
moments another process held the core (measured on 2 cores: EfficientNet-Lite2 at
160 px took 7.5 ms alone and 15.7 ms beside three busy processes by the wall clock,
7.5 and 7.7 ms of CPU time). On ``cuda`` it is
the ``torch.export`` program on the trial's GPU, timed with CUDA events.
``params_m`` counts the network's parameters, in millions.

Weights do not change either figure, so they are measured once per network,
image size, class count and device on each machine, and kept in the cache folder
(``latency/``) for every later trial and search there.

Example:
    >>> spec = CostSpec(latency=False)
    >>> deploy_cost("efficientnet_lite0", 96, 5, spec)
    {'params_m': 3.377}
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WARMUP = 10
MIN_RUNS = 30
MIN_SECONDS = 1.0
MAX_RUNS = 2000
_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class CostSpec:
    """Which costs a search reports with every epoch: ``params_m`` always, ``latency_ms``
    when ``latency`` is set, timed on ``device`` (cpu or cuda)."""

    latency: bool = True
    device: str = "cpu"


def _params_m(net: Any) -> float:
    return round(sum(p.numel() for p in net.parameters()) / 1e6, 3)


def _median_ms(run: Any, clock: Any = time.perf_counter) -> float:
    for _ in range(WARMUP):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MAX_RUNS and (
        len(times) < MIN_RUNS or time.perf_counter() - start < MIN_SECONDS
    ):
        t0 = clock()
        run()
        times.append(clock() - t0)
    return statistics.median(times) * 1e3


def cpu_latency_ms(deployed: Any, size: int) -> float:
    """The median time of ``deployed`` (a :class:`Deployed`) for one photo, as ONNX under
    onnxruntime on one CPU thread."""
    from trainables.models._deploy import export_program, onnx_session, random_photos, write_onnx

    with tempfile.TemporaryDirectory(prefix="tuner-latency-") as folder:
        path = Path(folder) / "model.onnx"
        write_onnx(export_program(deployed, size), deployed, size, path)
        session = onnx_session(path, threads=1)
        feed = {"image": random_photos(1, size, 2).numpy()}
        # One intra-op thread computes on the calling thread: its CPU time is the photo's
        # cost, whatever else the machine runs (a concurrent trial takes the core now and
        # then; wall-clock time would count those waits).
        return _median_ms(lambda: session.run(None, feed), clock=time.thread_time)


def cuda_latency_ms(deployed: Any, size: int) -> float:
    """The median time of ``deployed``'s ``torch.export`` program for one photo on the
    current CUDA device, between CUDA events."""
    import torch

    from trainables.models._deploy import export_program, random_photos

    module = export_program(deployed, size).module().to("cuda")
    photo = random_photos(1, size, 2).to("cuda")
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times: list[float] = []

    def run() -> None:
        begin.record()
        with torch.no_grad():
            module(photo)
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end))

    _median_ms(run)
    return statistics.median(times[WARMUP:])


def _cache_file(key: dict[str, Any]) -> Path:
    from trainables.data import cache_root

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "latency" / f"{digest}.json"


def _cached(key: dict[str, Any]) -> float | None:
    from trainables._files import FileRefused, parse_json, read_bounded

    try:
        data = parse_json(read_bounded(_cache_file(key), _CACHE_LIMIT), "latency cache")
    except (OSError, FileRefused):
        return None
    if not isinstance(data, dict):
        return None
    value = data.get("latency_ms")
    ok = data.get("key") == key and isinstance(value, float) and 0 < value < 1e7
    return value if ok else None


def deploy_cost(model: str, image_size: int, num_classes: int, spec: CostSpec) -> dict[str, float]:
    """``params_m`` and (if ``spec.latency``) ``latency_ms`` of ``model`` at ``image_size``
    with ``num_classes`` outputs (see the module doc)."""
    import platform

    import torch

    from trainables._files import write_replacing
    from trainables.models._deploy import Deployed
    from trainables.models._models import build_model, normalization

    net = build_model(model, num_classes, pretrained=False, image_size=image_size).eval()
    cost = {"params_m": _params_m(net)}
    if not spec.latency:
        return cost
    import onnxruntime

    key = {
        "model": model, "image_size": image_size, "num_classes": num_classes,
        "device": spec.device, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "machine": platform.node(), "processor": platform.processor() or platform.machine(),
        "clock": "thread_cpu" if spec.device == "cpu" else "cuda_events",
    }  # fmt: skip
    latency = _cached(key)
    if latency is None:
        deployed = Deployed(net, *normalization(model)).eval()
        with torch.no_grad():
            measure = cuda_latency_ms if spec.device == "cuda" else cpu_latency_ms
            latency = round(float(measure(deployed, image_size)), 4)
        path = _cache_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_replacing(path, json.dumps({"key": key, "latency_ms": latency}).encode())
    return cost | {"latency_ms": latency}
