"""Old checkpoints go only once no saved experiment state can still point at them."""

from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem
from ray.tune import Checkpoint

from tuner.search._pruning import CheckpointPruner


class FakeTrial:
    """The parts of a Ray Tune trial the pruner reads: its checkpoint manager's view."""

    def __init__(self, folder: Path, trial_id: str = "t1", fs: pafs.FileSystem | None = None):
        self.trial_id, self.folder, self.results, self.fs = trial_id, folder, [], fs
        self.run_metadata = SimpleNamespace(checkpoint_manager=self)

    def report(self, val_acc: float) -> None:
        path = self.folder / f"checkpoint_{len(self.results):06d}"
        path.mkdir(parents=True)
        self.results.append(
            SimpleNamespace(
                checkpoint=Checkpoint(str(path), filesystem=self.fs or pafs.LocalFileSystem()),
                metrics={"val_acc": val_acc, "epoch": len(self.results) + 1},
            )
        )

    @property
    def best_checkpoint_results(self):
        return list(self.results)

    @property
    def latest_checkpoint_result(self):
        return self.results[-1] if self.results else None

    def on_disk(self) -> list[int]:
        return sorted(int(p.name[-6:]) for p in self.folder.glob("checkpoint_*"))


def test_a_checkpoint_goes_only_two_state_saves_after_it_stopped_being_the_latest(tmp_path):
    trial, pruner = FakeTrial(tmp_path / "trial_t1"), CheckpointPruner()
    pruner.on_step_begin(0, [trial])
    for acc in (0.9, 0.5, 0.6):  # epoch 1 is the best
        trial.report(acc)
    assert pruner.get_state() is None  # save 1: latest is #2
    assert trial.on_disk() == [0, 1, 2]
    trial.report(0.7)
    trial.report(0.4)
    pruner.get_state()  # save 2: latest #4; save 1 (latest #2) completed, so #1 may go
    assert trial.on_disk() == [0, 2, 3, 4]
    trial.report(0.3)
    pruner.get_state()  # save 3: below save 2's latest (#4), all but the best two go
    assert trial.on_disk() == [0, 3, 4, 5]
    trial.report(0.2)
    pruner.on_experiment_end([trial])  # the end: best two and the latest
    assert trial.on_disk() == [0, 3, 6]


def test_after_resume_what_the_restored_state_names_as_latest_stays(tmp_path):
    trial = FakeTrial(tmp_path / "trial_t1")
    for acc in (0.9, 0.8, 0.5, 0.4, 0.3):  # restored with five checkpoints, #4 the latest
        trial.report(acc)
    pruner = CheckpointPruner()
    pruner.on_step_begin(0, [trial])
    trial.report(0.2)
    pruner.get_state()  # the restored state is a completed save: below #4 may go
    assert trial.on_disk() == [0, 1, 4, 5]


class CountingFileSystem(LocalFileSystem):
    """A local file system that counts what is asked of it, like requests to a bucket."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def info(self, path, **kwargs):
        self.requests.append(f"info {path}")
        return super().info(path, **kwargs)

    def rm(self, path, recursive=False, maxdepth=None):
        self.requests.append(f"rm {path}")
        return super().rm(path, recursive=recursive, maxdepth=maxdepth)


def test_a_state_save_asks_storage_only_for_the_checkpoints_it_deletes(tmp_path):
    counting = CountingFileSystem()
    trial = FakeTrial(tmp_path / "trial_t1", fs=pafs.PyFileSystem(pafs.FSSpecHandler(counting)))
    pruner = CheckpointPruner()
    pruner.on_step_begin(0, [trial])
    for acc in (0.9, 0.8, 0.5, 0.4, 0.3, 0.2):
        trial.report(acc)
    pruner.get_state()
    pruner.get_state()  # below #5 may go: #2, #3, #4
    assert trial.on_disk() == [0, 1, 5]
    deleting = list(counting.requests)
    assert deleting and all(r.endswith(("_000002", "_000003", "_000004")) for r in deleting)
    counting.requests.clear()
    for _ in range(5):  # nothing new: nothing asked of storage
        pruner.get_state()
    assert counting.requests == []
    trial.report(0.1)
    pruner.get_state()
    pruner.get_state()  # #5 goes: requests about #5 only
    assert trial.on_disk() == [0, 1, 6]
    assert counting.requests and all(r.endswith("_000005") for r in counting.requests)
