"""Shared fixtures: the real flower photos, small real subsets, synthetic folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The suite runs two test processes, each with searches of several processes, on a few
# cores: an OpenMP thread that spins while it waits takes a core another process needs.
# Set before torch loads; every process a test starts inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd
import pytest
from PIL import Image

from trainables import settings

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = settings().test_photos or ROOT.parent / "shared" / "data" / "flowers"


# Fixtures that start Ray or a whole search once: with `pytest -n 2 --dist loadgroup`
# (the README's test command) every test that uses one runs on the same worker.
_SHARED_FIXTURES = {
    "finished": "e2e",
    "finished_ray_tmp": "e2e",
    "cluster": "cluster",
    "gpu_node": "gpu_node",
    "s3_search": "s3",
}


@pytest.hookimpl(wrapper=True)  # the part before `yield` runs before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    for item in items:
        for fixture, group in _SHARED_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
                item.add_marker(pytest.mark.slow)  # it waits for a search or a cluster
                break
    # Real searches first: xdist hands out tests in this order, so a minutes-long
    # one started last would leave the other worker idle at the end.
    items.sort(
        key=lambda item: (
            not any(item.iter_markers("slow")) and not any(item.iter_markers("xdist_group"))
        )
    )
    yield


@pytest.fixture(scope="session", autouse=True)
def own_feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Test trials (and the searches tests start) keep frozen activations in the test run's
    own folder, never in the user's ``~/.cache/flower-tune``."""
    folder = tmp_path_factory.mktemp("tuner-cache")
    os.environ["TUNER_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def own_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test run's own config folder (``$XDG_CONFIG_HOME``, inherited by every command
    a test starts), never the user's ``~/.config``: the key that signs experiment state
    (``flower-tune/state.key``) is the run's. Both xdist workers share it, so an
    experiment either writes, the other may resume."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "config"
    folder.mkdir(exist_ok=True)
    os.environ["XDG_CONFIG_HOME"] = str(folder)
    settings.cache_clear()
    return folder


@pytest.fixture(autouse=True)
def fresh_settings() -> None:
    """Each test starts from the project's settings as the environment holds them (a
    process otherwise reads them once)."""

    settings.cache_clear()


class Environ:
    """``monkeypatch``'s environment changes, which the project's settings then read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._patch = monkeypatch

    def set(self, key: str, value: str) -> None:
        self._patch.setenv(key, value)
        self._reread()

    def delete(self, key: str) -> None:
        self._patch.delenv(key, raising=False)
        self._reread()

    def _reread(self) -> None:
        from trainables import settings

        settings.cache_clear()


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Environ:
    return Environ(monkeypatch)


@pytest.fixture(scope="session")
def flowers() -> Path:
    if not FLOWERS.is_dir():
        pytest.fail(f"real photos expected at {FLOWERS} (set TUNER_TEST_FLOWERS)")
    return FLOWERS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def experiment_at(folder: Path) -> Any:
    """The :class:`tuner.Experiment` whose local folder is ``folder``."""
    from tuner import Experiment

    return Experiment.from_folder(folder)


def read_board(source: Any) -> pd.DataFrame:
    """A leaderboard CSV (a path or a buffer) as written, trial ids as text: Ray's ids are
    eight hex digits, so one such as ``68394985`` or ``93556e90`` would otherwise be read
    as a number."""
    return pd.read_csv(source, dtype={"trial_id": str})


def make_subset(flowers: Path, dest: Path, per_class: int) -> Path:
    """A folder of symlinks to the first ``per_class`` real photos of each class."""
    for cls in sorted(p for p in flowers.iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for photo in sorted(cls.glob("*.jpg"))[:per_class]:
            (dest / cls.name / photo.name).symlink_to(photo)
    return dest


@pytest.fixture(scope="session")
def small_flowers(flowers: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real photos per class: enough for a real search in seconds."""
    return make_subset(flowers, tmp_path_factory.mktemp("small") / "flowers", 12)


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    """Three classes of 10 small generated photos, distinguishable by colour."""
    root = tmp_path / "synthetic"
    for label, colour in enumerate([(220, 30, 30), (30, 220, 30), (30, 30, 220)]):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(10):
            shade = tuple(max(0, c - 8 * i) for c in colour)
            Image.new("RGB", (48 + i, 40), shade).save(root / f"class{label}" / f"{i}.jpg")
    return root


def _exit_code(args: tuple[str, ...]) -> int:
    """``tuner.cli.main(args)``'s exit code (argparse's own errors exit via SystemExit).

    The command ends as its process would: a Ray it started (``refit``, ``export
    --distill``) is shut down, so that a later test in this process can start its own."""
    from tuner.cli import main

    ray = sys.modules.get("ray")
    ray_before = ray is not None and ray.is_initialized()
    try:
        return main(list(args))
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and not ray_before and ray.is_initialized():
            ray.shutdown()


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in this process, capturing its output (usable in any fixture scope)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _exit_code(args)
    return code, out.getvalue(), err.getvalue()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process; its output is read from ``capsys``."""
    code = _exit_code(args)
    out, err = capsys.readouterr()
    return code, out, err


def run_tuner(
    *args: str, env: dict[str, str] | None = None, timeout: int = 300, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tuner ARGS`` as a user would (in ``cwd``); capture everything."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


METRIC_KEYS = frozenset(
    {
        "val_acc",
        "val_loss",
        "train_acc",
        "train_loss",
        "epoch",
        "lr",
        "epoch_time_s",
        "images_per_s",
    }
)


def search_args(
    space: str | Path, data: Path, storage: Path | str, name: str | None, *extra: str
) -> list[str]:
    """The arguments of ``tuner search`` (no ``--name`` when ``name`` is None): the one
    place a test's search command line is built."""
    args = ["search", "--space", str(space), "--data", str(data), "--storage", str(storage)]
    return [*args, *(["--name", name] if name is not None else []), *extra]


def cli_search(
    space: str | Path, data: Path, storage: Path | str, name: str, *extra: str, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """``python -m tuner search`` as a user runs it, with the four arguments every test
    gives."""
    return run_tuner(*search_args(space, data, storage, name, *extra), **kwargs)  # type: ignore[arg-type]


TINY_SPACE = """
params:
  model: efficientnet_lite0
  pretrained: true
  image_size: 32
  optimizer: {choice: [adam, sgd]}
  lr: {loguniform: [1.0e-4, 1.0e-1]}
  batch_size: {choice: [16, 32]}
  freeze_depth: {randint: [2, 5]}
  aug_strength: {uniform: [0.0, 0.5]}
budget:
  num_samples: 5
  max_epochs: 3
  grace_period: 1
  reduction_factor: 2
  cpus_per_trial: 1
points_to_evaluate:
  - {optimizer: adam, lr: 1.0e-2, batch_size: 16, freeze_depth: 3, aug_strength: 0.0}
"""


@pytest.fixture(scope="session")
def finished_ray_tmp() -> Iterator[Path]:
    """The Ray temporary folder of the shared search alone (short: Ray's socket paths
    live under it), so that its worker logs can be read (tests/test_quiet.py)."""
    folder = Path(tempfile.mkdtemp(prefix="rq"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def finished(
    small_flowers: Path, tmp_path_factory: pytest.TempPathFactory, finished_ray_tmp: Path
) -> tuple:
    """One real `tuner search` (OptunaSearch + ASHA, 5 trials, 32 px) shared by every test,
    run as the README tells users to (``uv run``), in a Ray session of its own.

    Returns (completed process, storage folder, experiment folder); the experiment is
    named "e2e". Tests must not modify it.
    """
    uv = shutil.which("uv")
    assert uv, "uv is how users run the project (README); install it with pip install uv"
    tmp = tmp_path_factory.mktemp("search")
    space = tmp / "tiny.yaml"
    space.write_text(TINY_SPACE)
    storage = tmp / "results"
    proc = subprocess.run(
        [uv, "run", "--locked", "python", "-m", "tuner",
         *search_args(space, small_flowers, storage, "e2e")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "RAY_TMPDIR": str(finished_ray_tmp)},
    )  # fmt: skip
    if proc.returncode != 0:  # one clear failure instead of every test that reads it failing
        pytest.fail(
            f"the shared search exited {proc.returncode}:\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc, storage, storage / "e2e"


STATE_OF_STATUS = {"completed": "COMPLETE", "stopped_early": "PRUNED", "diverged": "FAIL"}


def assert_study_tells_the_leaderboard(exp_folder: Path) -> pd.DataFrame:
    """The Optuna study of a finished local search says what its leaderboard says: each
    trial's state from its status (PRUNED where the scheduler stopped it), every reported
    epoch an intermediate value, a completed trial's value its best val_acc (a warm start's
    trials of earlier experiments aside). Returns the leaderboard."""
    from tuner.search._study import WARM_ATTR, load_study

    exp = experiment_at(exp_folder)
    board = read_board(exp_folder / "leaderboard.csv").set_index("trial_id")
    loaded = load_study(exp)
    # Several objectives: the study's values are val_acc and the costs, and Optuna keeps
    # no intermediate values.
    from tuner.spaces._objectives import objectives_of

    space = json.loads((exp_folder / "tuner.json").read_text())["space"]
    names = list(objectives_of(space).names)
    multi = len(names) > 1
    assert len(loaded.directions) == len(names)
    study = [t for t in loaded.trials if WARM_ATTR not in t.user_attrs]
    trials = {t.user_attrs["tune_trial_id"]: t for t in study}
    assert set(trials) == set(board.index)
    for trial_id, trial in trials.items():
        row = board.loc[trial_id]
        assert trial.state.name == STATE_OF_STATUS[row["status"]], (trial_id, row["status"])
        # An epoch run again (after a resume, or from another trial's weights under PBT)
        # is reported again; the study keeps the first report of each epoch.
        reported: dict[int, list[float]] = {}
        for report in exp.reports(trial_id):
            reported.setdefault(int(report["epoch"]), []).append(report["val_acc"])
        assert set(trial.intermediate_values) == (set() if multi else set(reported)), trial_id
        for epoch, value in trial.intermediate_values.items():
            assert value == pytest.approx(reported[epoch][0]), (trial_id, epoch, reported)
        if trial.state.name == "COMPLETE":
            assert trial.values == pytest.approx([row[n] for n in names])
        assert trial.user_attrs["checkpoint"] == row["checkpoint"], trial_id
    return board.reset_index()


# Credentials of the throw-away S3 server (moto accepts any unless told to check them).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}
S3_BUCKET = "flowers"


def start_s3_server(
    env: dict[str, str] | None = None, log: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A real S3-compatible server process (moto's standalone server) on 127.0.0.1, with
    one line per request it serves in ``log`` if given.

    Returns the process and its ``HOST:PORT``, once it answers.
    """
    import socket
    import time

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab") if log else subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail("the S3 server did not start")


def s3_uri(endpoint: str, path: str) -> str:
    """``s3://PATH`` on the server at ``endpoint`` (plain HTTP)."""
    return f"s3://{path}?endpoint_override={endpoint}&scheme=http"


@pytest.fixture(scope="session")
def s3() -> Iterator[str]:
    """The endpoint of an S3 server holding the empty bucket ``flowers``; the test session
    (and every process it starts) gets the server's credentials in its environment."""
    import pyarrow.fs as pafs

    os.environ.update(S3_ENV)
    proc, endpoint = start_s3_server()
    try:
        fs, _ = pafs.FileSystem.from_uri(
            s3_uri(endpoint, S3_BUCKET) + "&allow_bucket_creation=true"
        )
        fs.create_dir(S3_BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def exported(finished: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared search's rank 1, exported as a user runs ``export`` (once per test run; tests
    only read it, or copy it to change the copy)."""
    _, storage, _ = finished
    out = tmp_path_factory.mktemp("export") / "model"
    code, _, err = run_cli("export", "e2e", "--storage", str(storage), "--output", str(out))
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    return out


# Runs a command, then prints its exit code, output and peak RSS (this wrapper's only
# child, so RUSAGE_CHILDREN is that child's alone: a process forked from the test's own
# would start with the test's high-water mark). A command past the timeout is killed.
_MEASURE = """
import json, resource, subprocess, sys
try:
    proc = subprocess.run(sys.argv[2:], capture_output=True, text=True,
                          timeout=float(sys.argv[1]))
    rc, out, err = proc.returncode, proc.stdout, proc.stderr
except subprocess.TimeoutExpired as exc:
    rc, out, err = None, str(exc.stdout or ""), str(exc.stderr or "")
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": rc, "out": out, "err": err, "peak": peak}))
"""


@dataclass
class Outcome:
    """How a measured ``python -m tuner`` ended."""

    rc: int | None  # None: killed at the timeout
    out: str
    err: str
    peak: int  # bytes: the command's own peak RSS

    def __str__(self) -> str:
        return f"exit {self.rc}, peak {self.peak / 2**20:.0f} MiB, stderr: {self.err[-1500:]}"


def measured(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> Outcome:
    """``python -m tuner ARGS`` as a user runs it, its own peak RSS measured."""
    command = [sys.executable, "-m", "tuner", *args]
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(timeout), *command], cwd=ROOT,
        capture_output=True, text=True, timeout=timeout + 60, env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Outcome(**json.loads(proc.stdout))


def fit_reports(cfg: Any, data: Any, resume_state: Any = None) -> list[tuple[dict, dict]]:
    """Every (metrics, checkpoint state) :func:`trainables.fit` reports, in order, on one
    thread. Each checkpoint folder is removed once read (the caller of ``fit`` owns it)."""
    from trainables import fit, load_state

    reports: list[tuple[dict, dict]] = []

    def report(metrics: dict, folder: Path) -> None:
        reports.append((metrics, load_state(folder)))
        shutil.rmtree(folder, ignore_errors=True)

    fit(cfg, data, report, resume_state=resume_state, threads=1)
    return reports


def decoded(folder: Path, size: int) -> Any:
    """The photos of ``folder`` decoded for ``size`` px and split (seed 0)."""
    from trainables import prepare_data, scan_folder
    from trainables.data._folders import resize_for

    return prepare_data(scan_folder(folder), resize=resize_for(size), seed=0)[1]
