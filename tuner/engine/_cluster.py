"""Ray: start a local one or join a cluster, and check what every node can reach.

Nothing here waits for ever: a cluster address (from a flag, ``$RAY_ADDRESS`` or
``tuner.json``) whose port does not answer within :data:`CONNECT_TIMEOUT_S` is
refused before Ray tries it, and resources that no node of the cluster has are
refused before a task or trial asks for them (:func:`check_fits`), instead of
Ray's autoscaler waiting for a node that never comes.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from collections.abc import Callable

from trainables import settings
from tuner._errors import UsageError
from tuner.engine._internals import TOKEN_NOTICE_LOGGER
from tuner.storage import Storage

CONNECT_TIMEOUT_S = 15.0  # for a cluster's port to answer
RAY_CLIENT_PORT = 10001  # ray://HOST without a port


def local_resources() -> dict[str, float]:
    """What a local Ray would find on this machine."""
    import torch

    return {
        "CPU": float(len(os.sched_getaffinity(0))),
        "GPU": float(torch.cuda.device_count()),
    }


def start_ray(address: str | None, say: Callable[[str], None]) -> dict[str, float]:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a local Ray without dashboard.

    Returns the cluster's total resources.
    """
    import ray

    address = address or settings().ray_address
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
        nodes = alive_nodes()
        say(f"Ray cluster at {address}: {len(nodes)} node(s)")
    else:
        # "local": never attach to some other Ray instance running on this machine. Ray
        # turns token authentication on for it (kept) and says so on stderr at every
        # start: not news to a user who did not start the cluster.
        notice = logging.getLogger(TOKEN_NOTICE_LOGGER)
        notice.addFilter(_drop_token_notice)
        try:
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        finally:
            notice.removeFilter(_drop_token_notice)
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """UsageError unless the cluster at ``address`` (``HOST:PORT`` or ``ray://HOST[:PORT]``)
    accepts a connection within ``timeout`` seconds (``auto`` and ``local`` are Ray's own)."""
    target = address.removeprefix("ray://")
    if address in ("auto", "local") or "://" in target:
        return
    host, sep, port = target.rpartition(":")
    if not sep:
        host, port = target, str(RAY_CLIENT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise UsageError(f"Ray cluster address {address!r} is not HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise UsageError(
            f"cannot reach the Ray cluster at {address} within {timeout:.0f} s ({reason}); "
            "check the address and that the cluster is up"
        ) from None


def check_fits(resources: dict[str, float], what: str = "a trial") -> None:
    """UsageError unless some alive node of the connected cluster has ``resources``
    (``cpu``, ``gpu``): Ray would otherwise wait for a node that never comes."""
    cpu, gpu = float(resources.get("cpu", 1.0)), float(resources.get("gpu", 0.0))
    if not all(math.isfinite(v) and v >= 0 for v in (cpu, gpu)):
        raise UsageError(f"{what} asks for {cpu:g} CPU and {gpu:g} GPU: not a request Ray takes")
    nodes = [n.get("Resources") for n in alive_nodes()]
    totals = [
        (float(r.get("CPU", 0)), float(r.get("GPU", 0))) for r in nodes if isinstance(r, dict)
    ]
    if any(c >= cpu and g >= gpu for c, g in totals):
        return
    most_cpu, most_gpu = max(totals, default=(0.0, 0.0))
    raise UsageError(
        f"{what} asks for {cpu:g} CPU and {gpu:g} GPU, more than any node of the cluster has "
        f"(the largest: {most_cpu:g} CPU, {most_gpu:g} GPU); Ray would wait for such a node "
        "for ever"
    )


def whole_node(resources: dict[str, float]) -> dict[str, float]:
    """What a task that runs alone after a search asks for (a refit, a distillation): every
    CPU of the largest alive node that has ``resources`` (and a whole GPU where a trial had
    a share of one), never less than ``resources``. Call :func:`check_fits` first."""
    cpu, gpu = float(resources.get("cpu", 1.0)), float(resources.get("gpu", 0.0))
    nodes = [n.get("Resources") for n in alive_nodes()]
    fitting = [
        (float(r.get("CPU", 0)), float(r.get("GPU", 0)))
        for r in nodes
        if isinstance(r, dict) and float(r.get("CPU", 0)) >= cpu and float(r.get("GPU", 0)) >= gpu
    ]
    if not fitting:
        return {"cpu": cpu, "gpu": gpu}
    most_cpu, most_gpu = max(fitting)
    whole_gpu = 1.0 if 0 < gpu < 1 and most_gpu >= 1 else gpu
    return {"cpu": max(cpu, most_cpu), "gpu": whole_gpu}


def _drop_token_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled")


def alive_nodes() -> list[dict[str, object]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_storage_reachable(storage: Storage) -> None:
    """With several nodes, every node must reach the same ``storage``.

    The driver writes a marker file there and a zero-CPU task on each node
    reads it through the same file system layer the trials use; a node that
    cannot (a node-local folder, an object store it has no route or
    credentials for) would write checkpoints where neither the driver nor
    ``resume`` can find them.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    token = uuid.uuid4().hex
    marker = f".tuner-probe-{token}"
    storage.write_text(marker, token)

    @ray.remote(num_cpus=0)
    def sees(where: Storage, name: str, expected: str) -> bool:
        try:
            return where.read_text(name) == expected
        except Exception:
            return False

    try:
        checks = [
            sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(str(n["NodeID"]), soft=False)
            ).remote(storage, marker, token)
            for n in nodes
        ]
        seen = ray.get(checks)
        blind = [str(n["NodeManagerAddress"]) for n, ok in zip(nodes, seen, strict=True) if not ok]
    finally:
        storage.delete(marker)
    if blind:
        kind = "node-local path" if storage.is_local else "storage some nodes cannot reach"
        raise UsageError(
            f"storage {storage.display()} is a {kind}: {len(blind)} of the cluster's "
            f"{len(nodes)} nodes ({', '.join(blind)}) cannot read it. Trials on those nodes "
            "would write checkpoints that the driver and `resume` cannot read. Use a "
            "folder every node mounts (NFS, a shared volume) or an object store (s3://...) "
            "every node reaches."
        )
