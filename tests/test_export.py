"""`evaluate`, `export` and `predict` on the shared finished search, as a user runs them.

The reference predictions here are computed independently of ``tuner``: the
checkpoint is read with ``torch.load`` and each photo goes through the same
``trainables`` steps a trial's validation photos go through.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import cli, experiment_at, read_board, run_cli, run_tuner
from synthetic import FakeTrial, write_experiment

import trainables
from tuner.cli import main
from tuner.results._report import _load, draw_report

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")

PHOTOS = slice(100, 103)  # photos of each class the 12-per-class search never saw
CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def unseen_photos(flowers: Path) -> list[tuple[Path, int]]:
    return [
        (photo, label)
        for label, name in enumerate(CLASSES)
        for photo in sorted((flowers / name).glob("*.jpg"))[PHOTOS]
    ]


def labelled_folder(dest: Path, photos: list[tuple[Path, int]], classes: list[str]) -> Path:
    for name in classes:
        (dest / name).mkdir(parents=True)
    for photo, label in photos:
        if CLASSES[label] in classes:
            (dest / CLASSES[label] / photo.name).symlink_to(photo)
    return dest


def reference_inputs(
    paths: list[Path], size: int, mean: list[float], std: list[float]
) -> torch.Tensor:
    """Photos as a trial's validation photos are prepared, step by step with trainables."""
    resize = trainables.resize_for(size)
    crop = trainables.eval_transform(size)
    images = [
        crop(torch.tensor(trainables.resize_center_crop(trainables.load_photo(p, resize), resize)))
        for p in paths
    ]
    return trainables.normalize(torch.stack(images), mean, std, torch.float32)


@torch.no_grad()
def checkpoint_logits(checkpoint: str, paths: list[Path], mirrored: bool = False) -> torch.Tensor:
    """The checkpoint's own logits for ``paths`` (or their mirror images), computed without
    tuner's code."""
    state = torch.load(Path(checkpoint) / "checkpoint.pt", weights_only=True)
    cfg = state["config"]
    model = trainables.build_model(cfg["model"], len(state["classes"]), False, cfg["image_size"])
    model.load_state_dict(state["model"])
    model.eval()
    mean, std = trainables.normalization(cfg["model"])
    inputs = reference_inputs(paths, cfg["image_size"], list(mean), list(std))
    return model(inputs.flip(3) if mirrored else inputs)


def checkpoint_probabilities(checkpoint: str, paths: list[Path], tta: str) -> torch.Tensor:
    """The checkpoint's class probabilities for ``paths`` with the export's test-time
    augmentation (``flip``: the mean over each photo and its mirror image)."""
    probs = checkpoint_logits(checkpoint, paths).softmax(1)
    if tta == "flip":
        probs = (probs + checkpoint_logits(checkpoint, paths, mirrored=True).softmax(1)) / 2
    return probs


@pytest.fixture(scope="module")
def board(finished) -> pd.DataFrame:
    _, _, exp = finished
    return read_board(exp / "leaderboard.csv")


def test_evaluate_reports_metrics_consistent_with_the_checkpoint(
    finished, flowers, board, tmp_path
):
    _, storage, _ = finished
    photos = unseen_photos(flowers)
    data = labelled_folder(tmp_path / "test", photos, CLASSES)
    (data / "roses" / "notes.jpg").write_text("not a photo")
    code, out, err = run_cli("evaluate", "e2e", "--storage", str(storage), "--data", str(data))
    assert code == 0, err[-3000:]
    result = json.loads(out)  # exactly one JSON object on stdout

    assert result["classes"] == CLASSES
    assert result["trial_id"] == board.loc[0, "trial_id"]
    assert result["checkpoint"] == board.loc[0, "checkpoint"]
    assert [s["path"] for s in result["skipped"]] == ["roses/notes.jpg"]
    assert result["skipped"][0]["reason"]
    matrix = result["confusion_matrix"]
    assert result["n_images"] == len(photos) == sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(CLASSES)))
    assert result["accuracy"] == pytest.approx(correct / len(photos))
    for i, name in enumerate(CLASSES):
        stats = result["per_class"][name]
        assert stats["support"] == sum(matrix[i]) == len(photos) // len(CLASSES)
        assert stats["recall"] == pytest.approx(matrix[i][i] / stats["support"])
        predicted = sum(row[i] for row in matrix)
        assert stats["precision"] == pytest.approx(matrix[i][i] / predicted if predicted else 0.0)

    # The same confusion matrix from predictions computed here, independently.
    ours = checkpoint_logits(result["checkpoint"], [p for p, _ in photos]).argmax(1).tolist()
    expected = [[0] * len(CLASSES) for _ in CLASSES]
    for (_, label), guess in zip(photos, ours, strict=True):
        expected[label][guess] += 1
    assert matrix == expected


def test_evaluate_on_the_validation_split_reproduces_val_acc(finished, board, tmp_path, capsys):
    _, storage, exp = finished
    split = json.loads((exp / "split.json").read_text())
    data = tmp_path / "val"
    for name in split["classes"]:
        (data / name).mkdir(parents=True)
    for path, _ in split["val"]:
        (data / path).symlink_to(Path(split["root"]) / path)
    for rank in (1, 2):
        code = main(
            ["evaluate", "e2e", "--storage", str(storage), "--data", str(data), "--rank", str(rank)]
        )
        assert code == 0
        result = json.loads(capsys.readouterr().out)
        assert result["trial_id"] == board.loc[rank - 1, "trial_id"]
        assert result["n_images"] == len(split["val"])
        assert result["accuracy"] == pytest.approx(board.loc[rank - 1, "val_acc"])


def test_evaluate_rejects_a_folder_with_other_classes(finished, flowers, tmp_path, capsys):
    _, storage, _ = finished
    data = labelled_folder(tmp_path / "other", unseen_photos(flowers), [*CLASSES[:-1], "orchids"])
    code = main(["evaluate", "e2e", "--storage", str(storage), "--data", str(data)])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing tulips" in err and "extra orchids" in err


def test_export_writes_a_stock_state_dict_and_matching_torchscript(
    finished, flowers, exported, board
):
    from efficientnet_lite_pytorch import EfficientNet

    labels = json.loads((exported / "labels.json").read_text())
    config = json.loads((exported / "config.json").read_text())
    assert labels == CLASSES
    assert config["trial_id"] == board.loc[0, "trial_id"]
    assert config["val_acc"] == pytest.approx(board.loc[0, "val_acc"])
    assert config["source_checkpoint"] == board.loc[0, "checkpoint"]
    assert config["model"] == "efficientnet_lite0" and config["image_size"] == 32
    assert config["resize"] == trainables.resize_for(32)
    mean, std = trainables.normalization(config["model"])
    assert config["mean"] == list(mean) and config["std"] == list(std)

    size = config["image_size"]
    stock = EfficientNet.from_name("efficientnet-lite0", num_classes=len(labels), image_size=size)
    stock.load_state_dict(torch.load(exported / "model.pt", weights_only=True), strict=True)
    stock.eval()
    scripted = torch.jit.load(str(exported / "model.ts"))
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    tta = config["tta"]  # `export --tta auto`'s choice: model.ts holds it
    assert tta in ("none", "flip")
    with torch.no_grad():
        if tta == "none":
            assert torch.allclose(scripted(x), stock(x), atol=1e-4)
        else:
            mean = (stock(x).softmax(1) + stock(x.flip(3)).softmax(1)) / 2
            assert torch.allclose(scripted(x).softmax(1), mean, atol=1e-5)
        # ... and both are the checkpoint's model.
        photos = [p for p, _ in unseen_photos(flowers)][:5]
        reference = checkpoint_probabilities(config["source_checkpoint"], photos, tta)
        inputs = reference_inputs(photos, size, config["mean"], config["std"])
        assert torch.allclose(scripted(inputs).softmax(1), reference, atol=1e-5)


def test_predict_matches_the_checkpoint_and_reports_unreadable_images(
    finished, flowers, exported, tmp_path
):
    config = json.loads((exported / "config.json").read_text())
    photos = [p for p, _ in unseen_photos(flowers)][::3]
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")
    images = [str(photos[0]), str(broken), *map(str, photos[1:])]
    code, out, err = run_cli("predict", str(exported), *images, "--top", "2", "--json")
    assert code == 1, err[-3000:]
    assert "Traceback" not in err
    results = json.loads(out)["results"]
    assert [r["image"] for r in results] == images
    assert "error" in results[1] and "predictions" not in results[1]
    good = [r for r in results if "predictions" in r]
    assert len(good) == len(photos)
    expected = checkpoint_probabilities(config["source_checkpoint"], photos, config["tta"])
    for result, probs in zip(good, expected, strict=True):
        top = result["predictions"]
        assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
        assert top[0]["class"] == CLASSES[int(probs.argmax())]
        assert top[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-4)


def test_predict_prints_readable_lines_and_errors_on_stderr(exported, flowers, tmp_path, capsys):
    photo = sorted((flowers / "tulips").glob("*.jpg"))[100]
    missing = tmp_path / "missing.jpg"
    assert main(["predict", str(exported), str(photo)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(photo) and len(out) == 4 and out[1].strip().endswith(tuple(CLASSES))
    assert main(["predict", str(exported), str(missing), str(photo), "--top", "1"]) == 1
    captured = capsys.readouterr()
    assert f"{missing}: error:" in captured.err
    assert captured.out.splitlines()[0] == str(photo)


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "nope", "--output", "{tmp}/out"], "no experiment 'nope'"),
        (["export", "e2e", "--output", "{tmp}/out", "--rank", "99"], "rank 99 is out of range"),
        (["evaluate", "e2e", "--data", "{tmp}/missing"], "does not exist"),
        (["evaluate", "nope", "--data", "{tmp}"], "no experiment 'nope'"),
        (["export", "e2e", "--output", "{tmp}/file.txt/out"], "cannot create"),
        (["predict", "{tmp}", "photo.jpg"], "is not an exported model folder"),
        (["predict", "{tmp}/corrupt", "photo.jpg"], "is not a usable export"),
    ],
)
def test_bad_input_exits_2_with_one_message(tmp_path, capsys, args, message):
    storage = tmp_path / "results"  # a synthetic experiment with real weights: no search
    trials = [FakeTrial("t", epochs=[(0.8, 0.5)])]
    write_experiment(storage, "e2e", trials, max_epochs=1, weights=True)
    (tmp_path / "file.txt").write_text("")
    (tmp_path / "corrupt").mkdir()
    for name in ("model.ts", "labels.json", "config.json"):
        (tmp_path / "corrupt" / name).write_text("{")
    argv = [a.format(tmp=tmp_path) for a in args]
    if argv[0] != "predict":
        argv += ["--storage", str(storage)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def export_ensemble(storage: Path, out: Path, method: str) -> str:
    """``export --ensemble 2`` of the shared search by ``method``; what it printed."""
    args = ("--storage", str(storage), "--output", str(out), "--ensemble", "2", "--tta", "none")
    chosen = () if method == "top" else ("--ensemble-method", method)  # top is the default
    code, stdout, err = run_cli("export", "e2e", *args, *chosen)
    assert code == 0, err[-3000:]
    return stdout


@pytest.fixture(scope="module")
def exported_ensemble(finished, tmp_path_factory) -> tuple[Path, str]:
    """The export of the top two trials as one model, and what the command printed."""
    _, storage, _ = finished
    out = tmp_path_factory.mktemp("ensemble") / "top"
    return out, export_ensemble(storage, out, "top")


@pytest.mark.parametrize("method", ["top", "greedy"])
def test_an_ensemble_predicts_the_mean_of_its_members_probabilities(
    finished, flowers, board, tmp_path, method, exported_ensemble
):
    _, storage, exp = finished
    if method == "top":
        out, stdout = exported_ensemble
    else:
        out = tmp_path / method
        stdout = export_ensemble(storage, out, method)
    config = json.loads((out / "config.json").read_text())
    ensemble = config["ensemble"]
    members = ensemble["members"]
    assert sum(m["weight"] for m in members) == 2 and ensemble["method"] == method
    if method == "top":
        assert [m["rank"] for m in members] == [1, 2]
        assert [m["trial_id"] for m in members] == list(board["trial_id"][:2])
    else:  # picked among the 4 best-ranked trials
        assert all(m["rank"] <= 4 for m in members)
    assert 0.0 <= ensemble["val_acc"] <= 1.0 and 0.0 <= ensemble["test_acc"] <= 1.0
    assert f"val_acc {ensemble['val_acc']:.4f}" in stdout
    # A line before each step: the candidates scored (in one pass), the test scoring, the
    # writing.
    candidates = "1, 2" if method == "top" else "1, 2, 3, 4"
    assert f"Scoring ranks {candidates} on the 10 validation photos in one pass" in stdout
    assert "Scoring the ensemble on the 10 test photos" in stdout and "Writing the export" in stdout
    photos = [p for p, _ in unseen_photos(flowers)][:6]
    inputs = reference_inputs(photos, config["image_size"], config["mean"], config["std"])
    scripted = torch.jit.load(str(out / "model.ts"))
    with torch.no_grad():
        expected = sum(
            m["weight"] * checkpoint_logits(m["source_checkpoint"], photos).softmax(1)
            for m in members
        ) / sum(m["weight"] for m in members)
        assert torch.allclose(scripted(inputs).softmax(1), expected, atol=1e-5)
    for m in members:  # each member's state_dict loads strictly into the stock model
        state = torch.load(out / m["state_dict"], weights_only=True)
        model = trainables.build_model(m["model"], len(CLASSES), False, config["image_size"])
        model.load_state_dict(state, strict=True)
    # `predict` uses an ensemble export unchanged.
    assert main(["predict", str(out), str(photos[0]), "--top", "1"]) == 0
    # Its test accuracy is listed beside the trials, in the leaderboard and the report.
    code, table, _ = run_cli("leaderboard", "e2e", "--storage", str(storage))
    assert code == 0
    made = [line for line in table.splitlines() if line.startswith(f"{method} ensemble of 2 (")]
    assert len(made) == 1 and f"test_acc {ensemble['test_acc']:.4f}" in made[0], table
    report = draw_report(_load(experiment_at(exp)), tmp_path / "report")
    assert f"| {method} ensemble of 2 (" in Path(report.markdown).read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--ensemble", "2", "--ensemble-method", "nope"), "invalid choice: 'nope'"),
        (("--ensemble", "2", "--refit"), "--ensemble and --refit cannot be combined"),
        (("--ensemble", "0"), "must be >= 1"),
    ],
)
def test_bad_ensemble_requests_exit_2_with_one_message(tmp_path, extra, message):
    storage = tmp_path / "results"
    write_experiment(storage, "e2e", [FakeTrial("t", epochs=[(0.8, 0.5)])], max_epochs=1)
    args = ("--storage", str(storage), "--output", str(tmp_path / "e"))
    code, _, err = run_cli("export", "e2e", *args, *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_refit_trains_the_chosen_config_on_train_and_val_and_scores_it_on_test(
    finished, board, tmp_path
):
    _, storage, exp = finished
    proc = run_tuner("refit", "e2e", "--storage", str(storage), "--epochs", "1", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    trial_id = board.loc[0, "trial_id"]
    record = json.loads((exp / "refit" / trial_id / "refit.json").read_text())
    split = json.loads((exp / "split.json").read_text())
    assert record["n_train"] == len(split["train"]) + len(split["val"])
    assert record["n_test"] == len(split["test"]) == 10
    assert record["epochs"] == record["config"]["max_epochs"] == 1  # --epochs 1
    assert record["search_best_epoch"] == board.loc[0, "best_epoch"]
    assert round(record["test_acc"] * 10, 6) % 1 == 0  # k of the 10 test photos
    assert f"test_acc {record['test_acc']:.4f}" in proc.stdout
    state = torch.load(exp / "refit" / trial_id / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == record["epochs"]
    assert state["config"]["seed"] == board.loc[0, "seed"]
    # `export --refit` exports the refit model, not the search checkpoint.
    out = tmp_path / "refit-export"
    code, printed, err = run_cli(
        "export", "e2e", "--storage", str(storage), "--output", str(out), "--refit"
    )
    assert code == 0, err
    said = f"the refit of trial {trial_id} (rank 1, retrained on train+val for {record['epochs']}"
    assert said in printed, printed
    exported = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], v) for k, v in state["model"].items())
    config = json.loads((out / "config.json").read_text())
    assert config["source_checkpoint"] == str(exp / "refit" / trial_id)
    code, table, _ = run_cli("leaderboard", "e2e", "--storage", str(storage))
    assert code == 0
    made = [line for line in table.splitlines() if line.startswith("refit of rank 1 (")]
    assert len(made) == 1 and f"test_acc {record['test_acc']:.4f} (val_acc -)" in made[0], table


def test_export_refit_trains_the_refit_first_where_the_trial_has_none(finished, tmp_path):
    _, _, exp = finished
    copy = tmp_path / "r" / "e2e"
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns("refit"))
    out = tmp_path / "x"
    args = ("--storage", str(copy.parent), "--output", str(out), "--refit", "--rank", "2")
    proc = run_tuner("export", "e2e", *args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (folder,) = (copy / "refit").iterdir()  # rank 2's refit, and no other
    record = json.loads((folder / "refit.json").read_text())
    assert record["rank"] == 2 and f"Trial {folder.name} (rank 2) has no refit yet" in proc.stdout
    assert record["epochs"] == 3  # the epochs the trial was given, not its best epoch
    assert f"the refit of trial {folder.name} (rank 2, retrained on train+val" in proc.stdout
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    exported = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], v) for k, v in state["model"].items())
    # Asked again, it exports the refit it has: nothing is trained.
    again = run_cli("export", "e2e", *args[:2], "--output", str(tmp_path / "y"), *args[4:])
    assert again[0] == 0 and "has no refit yet" not in again[1], again[2]
    # A refit record that is not one, or whose checkpoint is gone, is refused, never
    # trained over.
    (folder / "refit.json").write_text(json.dumps({**record, "epochs": "3"}))
    code, _, err = run_cli("export", "e2e", *args[:2], "--output", str(tmp_path / "z"), *args[4:])
    assert code == 2 and "cannot be read" in err and "Traceback" not in err, err
    (folder / "refit.json").write_text(json.dumps(record))
    (folder / "checkpoint.pt").unlink()
    code, _, err = run_cli("export", "e2e", *args[:2], "--output", str(tmp_path / "z"), *args[4:])
    assert code == 2 and "cannot be read; train it again with: python -m tuner refit e2e" in err
    assert not (folder / "checkpoint.pt").exists() and not (tmp_path / "z").exists()


class Payload(torch.nn.Module):
    """What a crafted model.ts could do when run: write into a file through a shared map."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.path, True, 64, dtype=torch.uint8)
        mapped.fill_(1)
        return torch.zeros(x.shape[0], 5) + mapped.sum().float() * 0


def test_predict_runs_no_code_from_the_export_unless_trusted(exported, flowers, tmp_path):
    """In this process: the payload only overwrites a file of its own."""
    import shutil

    victim = tmp_path / "victim.bin"
    victim.write_bytes(bytes(64))
    crafted = tmp_path / "crafted"
    shutil.copytree(exported, crafted)
    torch.jit.save(torch.jit.script(Payload(str(victim))), str(crafted / "model.ts"))
    photo = str(sorted((flowers / "roses").glob("*.jpg"))[100])
    code, plain, err = run_cli("predict", str(exported), photo, "--json")
    assert code == 0, err[-2000:]
    code, safe, err = run_cli("predict", str(crafted), photo, "--json")
    assert code == 0, err[-2000:]
    assert victim.read_bytes() == bytes(64)  # model.ts never ran
    assert json.loads(safe)["results"] == json.loads(plain)["results"]
    # Trusted, the real TorchScript export answers like the state_dict...
    code, trusted, err = run_cli("predict", str(exported), photo, "--json", "--trust-model")
    assert code == 0, err[-2000:]
    for a, b in zip(
        json.loads(trusted)["results"][0]["predictions"],
        json.loads(plain)["results"][0]["predictions"],
        strict=True,
    ):
        assert a["class"] == b["class"] and a["probability"] == pytest.approx(
            b["probability"], abs=1e-4
        )
    # ... and the crafted one does what its author wrote: the payload is real.
    assert run_cli("predict", str(crafted), photo, "--trust-model")[0] == 0
    assert victim.read_bytes() == bytes([1]) * 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_size": 0}, "image_size 0 is not a whole number of 32-1024 px"),
        ({"image_size": 100000000}, "image_size 100000000 is not"),
        ({"num_classes": 3}, "num_classes 3 != 5 labels"),
        ({"mean": [0.5, 0.5]}, "mean [0.5, 0.5] is not three finite numbers"),
        ({"std": [1, 0, 1]}, "must be positive"),
        ({"model": "os.system"}, "model 'os.system' is none of"),
    ],
)
def test_a_tampered_export_config_exits_2_with_one_message(
    exported, tmp_path, capsys, change, message
):
    """In this process (a real process's exit 2 and stderr are checked for one tampered
    value below and in test_bad_input.py)."""
    import shutil

    folder = tmp_path / "tampered"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text()) | change
    (folder / "config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "predict", str(folder), "photo.jpg")
    assert code == 2 and message in err, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if change == {"model": "os.system"}:
        proc = run_tuner("predict", str(folder), "photo.jpg")
        assert proc.returncode == 2 and proc.stderr.strip() == err.strip(), proc.stderr


def test_export_refuses_a_non_empty_folder_and_force_replaces_it_whole(finished, tmp_path):
    _, storage, _ = finished
    out = tmp_path / "out"
    (out / "members" / "old").mkdir(parents=True)
    (out / "members" / "old" / "model.pt").write_text("an earlier ensemble's member")
    (out / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    args = ("export", "e2e", "--storage", str(storage), "--output", str(out))
    code, _, err = run_cli(*args)
    assert code == 2 and "is not empty" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    code, _, err = run_cli(*args, "--force")
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "labels.json", "model.onnx", "model.pt", "model.pt2", "model.ts",
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


SLOW_EXPORT = """
import sys, time
import tuner.results._export as export
real = export._save_state_dict
def slow(module, path):
    real(module, path)
    print("wrote", path, flush=True)
    time.sleep(30)
export._save_state_dict = slow
from tuner.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_export_killed_midway_leaves_no_output_folder(finished, tmp_path):
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    _, storage, _ = finished
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_EXPORT, "export", "e2e", "--storage", str(storage),
         "--output", str(out), "--ensemble", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    # After the lines of the steps before it: the first member's state_dict is written.
    lines = [proc.stdout.readline()]
    while lines[-1] and not lines[-1].startswith("wrote"):
        lines.append(proc.stdout.readline())
    assert lines[-1].startswith("wrote"), lines  # midway
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert all(p.name.startswith(".out.") for p in tmp_path.iterdir())


def test_predict_on_a_folder_writes_one_csv_row_per_photo_that_agrees_with_evaluate(
    finished, exported, tmp_path
):
    import csv

    _, storage, exp = finished
    split = json.loads((exp / "split.json").read_text())
    folder = tmp_path / "test photos"
    for rel, _ in split["test"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).symlink_to(Path(split["root"]) / rel)
    (folder / "daisy" / "notes.txt").write_text("not a photo, not listed")
    (folder / "daisy" / "broken.jpg").write_text("not a photo, listed with an error")
    out = tmp_path / "predictions.csv"
    code, stdout, _ = run_cli("predict", str(exported), str(folder), "--output", str(out))
    assert code == 1 and f"Wrote {out}" in stdout  # 1: one photo could not be read
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(split["test"]) + 1
    broken = [r for r in rows if r["image"].endswith("broken.jpg")]
    assert len(broken) == 1 and broken[0]["error"] and not broken[0]["class_1"]
    scored = [r for r in rows if not r["error"]]
    right = [Path(r["image"]).relative_to(folder).parts[0] == r["class_1"] for r in scored]
    tta = json.loads((exported / "config.json").read_text())["tta"]  # as predict applies it
    code, metrics, err = run_cli("evaluate", "e2e", "--storage", str(storage), "--tta", tta)
    assert code == 0, err
    assert sum(right) / len(right) == pytest.approx(json.loads(metrics)["accuracy"])
    assert all(float(r["probability_1"]) >= float(r["probability_2"]) for r in scored)
    # A .json file holds what --json prints: one object, model_dir and results.
    photos = [scored[0]["image"], broken[0]["image"]]
    code, printed, _ = run_cli("predict", str(exported), *photos, "--json")
    assert code == 1
    out = tmp_path / "predictions.json"
    assert run_cli("predict", str(exported), *photos, "--output", str(out))[0] == 1
    written = json.loads(out.read_text())
    assert written == json.loads(printed) and list(written) == ["model_dir", "results"]
    assert [r["image"] for r in written["results"]] == photos


def readme_snippet() -> str:
    """The README's code block after ``<!-- snippet: deploy -->``."""
    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- snippet: deploy -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


# Each variant of the snippet run as a script once per photo, in one process.
RUN_SNIPPET = """
import json, sys
variants, folder, photos = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
for snippet in variants:
    for photo in photos:
        sys.argv = ["snippet", folder, photo]
        exec(compile(snippet, "README", "exec"), {"__name__": "__main__"})
assert not [m for m in sys.modules if m.split(".")[0] in ("tuner", "trainables")]
"""

ONNX_LINES = """session = ort.InferenceSession(f"{folder}/model.onnx")
probabilities = session.run(None, {"image": pixels})[0][0]
"""
PROGRAM_LINES = """import torch
program = torch.export.load(f"{folder}/model.pt2").module()
probabilities = program(torch.from_numpy(pixels))[0].detach().numpy()
"""


@pytest.mark.parametrize("kind", ["single", "ensemble"])
def test_the_readme_snippet_answers_like_predict_with_onnx_and_torch_export(
    exported, exported_ensemble, flowers, tmp_path, kind
):
    out = exported if kind == "single" else exported_ensemble[0]
    deploy = json.loads((out / "config.json").read_text())["deploy"]
    assert deploy["input"]["dtype"] == "uint8" and deploy["output"]["shape"] == ["N", 5]
    assert_snippet_answers_like_predict(out, flowers, tmp_path)


def assert_snippet_answers_like_predict(out, flowers, tmp_path) -> None:
    """The README snippet, with ONNX and with torch.export, on one photo of each class in a
    fresh Python: the class and every probability within 1e-4 of ``predict``'s."""
    import subprocess
    import sys

    photos = [str(p) for p, _ in unseen_photos(flowers)][::3]  # one of each class
    code, predicted, err = run_cli("predict", str(out), *photos, "--json", "--top", "5")
    assert code == 0, err[-2000:]
    expected = [
        {p["class"]: p["probability"] for p in r["predictions"]}
        for r in json.loads(predicted)["results"]
    ]
    snippet = readme_snippet()
    assert ONNX_LINES in snippet
    variants = [snippet, snippet.replace(ONNX_LINES, PROGRAM_LINES)]
    ran = subprocess.run(
        [sys.executable, "-c", RUN_SNIPPET, json.dumps(variants), str(out), json.dumps(photos)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    answers = [json.loads(line) for line in ran.stdout.splitlines()]
    assert len(answers) == len(variants) * len(photos)
    for got, want in zip(answers, expected * len(variants), strict=True):
        assert max(got, key=got.get) == max(want, key=want.get)
        for label, probability in want.items():
            assert got[label] == pytest.approx(probability, abs=1e-4)
