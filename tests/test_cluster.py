"""A real two-node Ray cluster on this machine: `ray start --head` plus a second `ray start`.

The second node lives in its own mount namespace where one folder is a private
tmpfs, so a path there is genuinely node-local: the driver sees one folder, the
second node another.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import S3_BUCKET, cli_search, experiment_at, free_port, read_board, s3_uri

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
# A throw-away cluster on loopback: no token authentication between its processes.
AUTH = {"RAY_AUTH_MODE": "disabled"}
# Trials of several seconds (the whole network trains at 96 px): a trial that ended
# hands its worker to the next one, so trials shorter than the second node's worker
# start-up would all run on the first node.
SPACE = (
    "params:\n  model: efficientnet_lite0\n  image_size: 96\n  freeze_depth: 0\n"
    "  aug_strength: 0.0\n  lr: {loguniform: [1.0e-3, 1.0e-2]}\n"
    "budget:\n  num_samples: 4\n  max_epochs: 6\n  grace_period: 6\n  cpus_per_trial: 1\n"
)


def ray_node(*args: str, temp_dir: Path, wrap: list[str] | None = None) -> subprocess.Popen[str]:
    command = [RAY, "start", "--block", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    return subprocess.Popen(
        [*(wrap or []), *command, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **AUTH, "RAY_TMPDIR": str(temp_dir)},
    )


def wait_until_cluster_has(address: str, resources: str, timeout: float = 180) -> None:
    """Poll `ray status` until its resource summary shows ``resources`` (e.g. "/2.0 CPU")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run(
            [RAY, "status", f"--address={address}"],
            capture_output=True,
            text=True,
            env={**os.environ, **AUTH},
        )
        if resources in status.stdout:
            return
        time.sleep(2)
    pytest.fail(f"the cluster at {address} never showed {resources}: {status.stdout[-500:]}")


def stop(node: subprocess.Popen[str]) -> None:
    """Stop a `ray start --block` node and every process it started (its session)."""
    try:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=5)  # here it outlasts even 15 s; then its session is killed
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster(s3: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(address, shadowed folder): two 1-CPU nodes; the second has a private tmpfs. Both
    have the credentials of the test S3 server (``s3``) in their environment."""
    shadow = tmp_path_factory.mktemp("cluster") / "shadow"
    shadow.mkdir()
    # Ray's unix socket paths must stay short: its temp dir cannot live under pytest's.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [ray_node("--head", f"--port={port}", "--include-dashboard=false", temp_dir=ray_tmp)]
    private = f'mount -t tmpfs none {shadow} && exec "$0" "$@"'
    unshare = ["unshare", "-m", "--propagation", "private", "sh", "-c", private]
    try:
        time.sleep(5)
        nodes.append(ray_node(f"--address={address}", temp_dir=ray_tmp, wrap=unshare))
        wait_until_cluster_has(address, "/2.0 CPU")
        yield address, shadow
    finally:
        for node in reversed(nodes):
            stop(node)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_search_on_an_existing_cluster_uses_both_nodes_each_with_decoded_photos(
    cluster, small_flowers, tmp_path
):
    """Every trial ends, on both nodes of the cluster it joined. The driver decodes into a
    folder the second node cannot see (its private tmpfs shadows it): trials there decode
    the photos once into that node's own cache. Nothing photo-sized goes through Ray's
    object store."""
    address, shadow = cluster
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("image_size: 96", "image_size: 80"))  # 91 px: its own entry
    driver_cache = shadow / "driver-cache"
    proc = cli_search(
        space, small_flowers, tmp_path / "shared", "c4", "--address", address,
        "--cache-dir", str(driver_cache), timeout=600, env=AUTH,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 node(s)" in proc.stdout
    board = read_board(tmp_path / "shared" / "c4" / "leaderboard.csv")
    assert len(board) == 4 and (board["status"] == "completed").all()
    experiment = experiment_at(tmp_path / "shared" / "c4")
    nodes = {r["node_id"] for t in experiment.trial_ids() for r in experiment.reports(t)}
    assert len(nodes) == 2, proc.stdout[-6000:]
    (driver_entry,) = (driver_cache / "decoded").glob("*/pixels.u8")
    # The second node's trials decoded into its $TUNER_CACHE (the test session's, which this
    # process can see), from the photos, the same rows as the driver's.
    node_entries = [
        p.parent
        for p in (Path(os.environ["TUNER_CACHE"]) / "decoded").glob("*/head.json")
        if json.loads(p.read_text()) == {"version": 1, "size": 91, "root": str(small_flowers)}
    ]
    assert len(node_entries) == 1, proc.stdout[-3000:]
    assert (node_entries[0] / "pixels.u8").read_bytes() == driver_entry.read_bytes()


def test_a_two_node_search_on_object_storage_needs_no_shared_folder(
    cluster, s3, small_flowers, tmp_path
):
    """The trials of both nodes write their checkpoints and results to the bucket; the
    driver reads them all from there."""
    address, _ = cluster
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    uri = s3_uri(s3, f"{S3_BUCKET}/cluster")
    proc = cli_search(
        space, small_flowers, uri, "c3", "--address", address, timeout=600, env=AUTH, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    from tuner import Experiment, Storage

    exp = Experiment(Storage.parse(uri), "c3")
    board = read_board(io.BytesIO(exp.storage.read_bytes(exp.rel("leaderboard.csv"))))
    assert len(board) == 4 and (board["status"] == "completed").all()
    assert board["checkpoint"].str.startswith(f"s3://{S3_BUCKET}/cluster/c3/trial_").all()
    nodes = {r["node_id"] for t in exp.trial_ids() for r in exp.reports(t)}
    assert len(nodes) == 2, proc.stdout[-6000:]
    assert [p.name for p in tmp_path.iterdir()] == ["space.yaml"]


def test_a_node_local_storage_path_is_refused(cluster, small_flowers, tmp_path):
    address, shadow = cluster
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = shadow / "results"
    proc = cli_search(
        space, small_flowers, storage, "c2", "--address", address, timeout=300, env=AUTH
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "node-local path" in proc.stderr and "1 of the cluster's 2 nodes" in proc.stderr
    assert "every node mounts" in proc.stderr and "Traceback" not in proc.stderr
    assert not (storage / "c2").exists()
    shutil.rmtree(storage, ignore_errors=True)


@pytest.fixture(scope="module")
def gpu_node() -> Iterator[str]:
    """A one-node cluster that advertises one GPU (the trials compute on the CPU)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))
    port = free_port()
    node = subprocess.Popen(
        [
            RAY,
            "start",
            "--block",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **AUTH, "RAY_TMPDIR": str(ray_tmp)},
    )
    try:
        address = f"127.0.0.1:{port}"
        wait_until_cluster_has(address, "/1.0 GPU")
        yield address
    finally:
        stop(node)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_four_trials_share_one_gpu_by_default(gpu_node, small_flowers, tmp_path):
    space = tmp_path / "space.yaml"
    # Trials long enough (64 px, whole network trained) that all four are seen running at once.
    space.write_text(
        "params:\n  model: efficientnet_lite0\n  image_size: 64\n  freeze_depth: 0\n"
        "  lr: {loguniform: [1.0e-3, 1.0e-2]}\n"
        "budget:\n  num_samples: 4\n  max_epochs: 4\n  grace_period: 4\n  cpus_per_trial: 0.5\n"
    )
    proc = cli_search(
        space, small_flowers, tmp_path / "r", "g", "--address", gpu_node, timeout=600, env=AUTH
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    exp = tmp_path / "r" / "g"
    assert experiment_at(exp).record().resources == {"cpu": 0.5, "gpu": 0.25}
    assert "0.25 GPU per trial" in proc.stdout
    spans = []
    experiment = experiment_at(exp)
    for rows in map(experiment.reports, experiment.trial_ids()):
        start = rows[0]["timestamp"] - rows[0]["time_this_iter_s"]
        spans.append((start, rows[-1]["timestamp"]))
    assert len(spans) == 4 and max_overlap(spans) == 4, spans


PROBE_LOCAL_RAY = """
import json, subprocess
import tuner
from tuner.engine._cluster import start_ray
import ray
start_ray(None, print)
node = ray._private.worker.global_worker.node
listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
print(json.dumps({"webui": node.address_info.get("webui_url"), "listening": listening}))
"""


def test_a_local_search_starts_ray_without_its_dashboard():
    if shutil.which("ss") is None:
        pytest.skip("needs iproute2's ss")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE_LOCAL_RAY], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not found["webui"]
    assert "dashboard" not in found["listening"].lower() and ":8265 " not in found["listening"]
    assert "gcs_server" in found["listening"]  # the probe does see Ray's own listeners
