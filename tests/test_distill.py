"""`export --distill`: one network trained on the top-K ensemble's probabilities mixed with
the true labels, on train + val, scored on test, exported like any single model.

The training side (soft targets in the cache) runs on real photos with real weights
(EfficientNet-Lite0 from its package, 32 px); the command runs on the shared search."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from conftest import decoded, fit_reports, read_board, run_cli, run_tuner
from test_export import assert_snippet_answers_like_predict

import trainables
from trainables import TrialConfig, augment_batch, build_inputs, choose_precision
from trainables.train._train import Training

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")

BASE = dict(
    model="efficientnet_lite0", pretrained=True, image_size=32, batch_size=8, lr=0.01,
    optimizer="sgd", step_size=1, gamma=0.5, aug_strength=0.3, max_epochs=2, seed=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def photos(small_flowers):
    return decoded(small_flowers, 32)


def onehot(data):
    return np.eye(len(data.classes), dtype=np.float32)[data.train_y]


# --- the training side: soft targets in place of the labels ------------------------------


def test_one_hot_soft_targets_train_as_the_labels_do(photos):
    cfg = TrialConfig.from_dict(BASE)
    hard = fit_reports(cfg, photos)
    soft = fit_reports(cfg, dataclasses.replace(photos, train_soft=onehot(photos)))
    for (a, _), (b, _) in zip(hard, soft, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_acc"] == b["val_acc"]


def test_a_teachers_targets_change_the_training_and_are_mixed_like_labels(photos):
    teacher = np.random.default_rng(0).dirichlet(np.ones(len(photos.classes)), len(photos.train_y))
    targets = (0.7 * teacher + 0.3 * onehot(photos)).astype(np.float32)
    taught = dataclasses.replace(photos, train_soft=targets)
    cfg = TrialConfig.from_dict(BASE)
    plain, soft = fit_reports(cfg, photos), fit_reports(cfg, taught)
    assert plain[-1][0]["train_loss"] != pytest.approx(soft[-1][0]["train_loss"], rel=1e-3)
    a, b = plain[-1][1]["model"], soft[-1][1]["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # A batch's labels are the targets of its rows; mixup mixes them, pair by pair.
    mixed = TrialConfig.from_dict({**BASE, "mixup": 0.4, "freeze_depth": 0})
    precision = choose_precision(mixed.precision, torch.device("cpu"), mixed.model)
    training = Training.start(mixed, len(photos.classes), precision)
    inputs = build_inputs(mixed, taught, training.model, precision)
    idx = torch.arange(8)
    generator = torch.Generator().manual_seed(3)
    draw_gen = torch.Generator().manual_seed(3)
    assert inputs.kind == "images"
    _, labels = inputs.train_batch(idx, generator, 1)
    # The same draws again, to recover the mixing's choices: augmentation first, then mixing.
    augment_batch(inputs.train.gather(idx), inputs.train_crop, inputs.strength, draw_gen)
    draw = inputs.mixing.draw(torch.zeros(8, 3, 32, 32), draw_gen)
    want = torch.from_numpy(targets[:8])
    want = want * draw.lam + want[draw.perm] * (1 - draw.lam)
    assert torch.allclose(labels, want, atol=1e-6)
    assert torch.allclose(labels.sum(1), torch.ones(8), atol=1e-5)


@pytest.mark.parametrize("depth", [0, 3])
def test_a_teacher_member_runs_only_its_trained_part_and_answers_as_the_whole_model(photos, depth):
    """predict_train (cached frozen activations at depth 3) gives the probabilities the whole
    network gives on the same centre crops."""
    from trainables import eval_transform, normalize, predict_train
    from trainables.train._features import cache_part

    cfg = TrialConfig.from_dict({**BASE, "freeze_depth": depth, "aug_strength": 0.6})
    assert (cache_part(cfg) is not None) == (depth > 0)
    torch.manual_seed(0)
    net = trainables.build_model(cfg.model, len(photos.classes), True, cfg.image_size).eval()
    got = predict_train(cfg, photos, net)
    x = eval_transform(32)(torch.from_numpy(photos.train_x))
    mean, std = trainables.normalization(cfg.model)
    with torch.no_grad():
        want = net(normalize(x, mean, std, torch.float32)).softmax(1).numpy()
    assert got.shape == (len(photos.train_y), len(photos.classes))
    assert np.allclose(got, want, atol=1e-5)


def test_the_students_epochs_default_to_the_trials_max_epochs_and_epochs_sets_them():
    from types import SimpleNamespace

    from tuner._errors import UsageError
    from tuner.results._distill import DistillRequest, _folder, student_config

    trial = SimpleNamespace(config=TrialConfig.from_dict(BASE | {"max_epochs": 6}).to_dict(),
                            best_epoch=2)  # fmt: skip
    assert student_config(trial, None, None)["max_epochs"] == 6  # not its best epoch, 2
    longer = student_config(trial, None, 5)
    assert longer["max_epochs"] == 5
    assert {k: v for k, v in longer.items() if k != "max_epochs"} == {
        k: v for k, v in student_config(trial, None, None).items() if k != "max_epochs"
    }
    with pytest.raises(UsageError, match="--student vgg99"):
        student_config(trial, "vgg99", 5)
    # A student's folder and record name its epochs: each count has a folder of its own.
    assert DistillRequest(epochs=5).as_record()["epochs"] == 5
    assert _folder("t", DistillRequest(epochs=6)) == "distilled/t-top3-e6"
    assert (
        _folder("t", DistillRequest(epochs=5, student="resnet18")) == "distilled/t-top3-resnet18-e5"
    )
    # Another teacher weight is another model: it never lands in (and replaces) the
    # default's folder.
    assert _folder("t", DistillRequest(epochs=6, teacher_weight=0.0)) == "distilled/t-top3-e6-w0.0"
    weighed = DistillRequest(epochs=6, teacher_weight=0.35)
    assert _folder("t", weighed) == "distilled/t-top3-e6-w0.35"
    near = DistillRequest(epochs=6, teacher_weight=0.35000001)
    assert _folder("t", near) != _folder("t", weighed)


# --- the command --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def board(finished):

    return read_board(finished[2] / "leaderboard.csv")


@pytest.fixture(scope="module")
def distilled(finished, tmp_path_factory):
    """`export e2e --distill` on the shared search, run as a user runs it."""
    _, storage, exp = finished
    out = tmp_path_factory.mktemp("distilled") / "model"
    proc = run_tuner(
        "export", "e2e", "--storage", str(storage), "--output", str(out), "--distill",
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc, out, exp


def test_distill_trains_the_rank_1_config_on_the_ensembles_targets_and_scores_it_on_test(
    distilled, finished, board
):
    proc, out, exp = distilled
    _, storage, _ = finished
    config = json.loads((out / "config.json").read_text())
    teacher = config["distilled"]["teacher"]
    ranks = [m["rank"] for m in teacher["members"]]
    assert ranks == [1, 2, 3] and teacher["method"] == "top"
    assert [m["trial_id"] for m in teacher["members"]] == list(board["trial_id"][:3])
    assert config["trial_id"] == board.loc[0, "trial_id"] and config["val_acc"] is None
    given = json.loads((exp / "best_config.json").read_text())["config"]["max_epochs"]
    folder = exp / "distilled" / f"{board.loc[0, 'trial_id']}-top3-e{given}"
    record = json.loads((folder / "distill.json").read_text())
    split = json.loads((exp / "split.json").read_text())
    assert record["n_train"] == len(split["train"]) + len(split["val"])
    assert record["n_test"] == len(split["test"]) == 10
    assert round(record["test_acc"] * 10, 6) % 1 == 0  # k of the 10 test photos
    # The epochs rank 1 was given, not its best epoch count.
    assert record["epochs"] == record["request"]["epochs"] == given
    assert record["teacher_weight"] == 0.7
    assert config["distilled"]["test_acc"] == record["test_acc"]
    # It ran alone after the search: on every CPU of the node (a trial had one).
    assert record["resources"] == {"cpu": os.cpu_count(), "gpu": 0.0}
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    exported = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], v) for k, v in state["model"].items())
    assert f"test_acc {record['test_acc']:.4f}" in proc.stdout
    assert f"distillation: {record['epochs']}/{record['epochs']} epochs" in proc.stderr
    # The leaderboard lists it among the made models.
    code, table, _ = run_cli("leaderboard", "e2e", "--storage", str(storage))
    assert code == 0
    made = [line for line in table.splitlines() if "distilled from the top ensemble of 3" in line]
    assert len(made) == 1 and f"test_acc {record['test_acc']:.4f}" in made[0], table


def test_distilling_again_with_the_same_settings_exports_the_same_model(
    distilled, finished, tmp_path
):
    _, out, _ = distilled
    _, storage, _ = finished
    again = tmp_path / "again"
    code, printed, err = run_cli(
        "export", "e2e", "--storage", str(storage), "--output", str(again), "--distill"
    )
    assert code == 0, err[-2000:]
    assert "Distilled model found" in printed
    assert (again / "model.pt").read_bytes() == (out / "model.pt").read_bytes()


def test_distill_epochs_sets_the_students_epochs_and_keeps_it_beside_the_default(
    distilled, finished, board, tmp_path
):
    _, _, exp = distilled
    _, storage, _ = finished
    given = json.loads((exp / "best_config.json").read_text())["config"]["max_epochs"]
    default = exp / "distilled" / f"{board.loc[0, 'trial_id']}-top3-e{given}" / "distill.json"
    before = default.read_bytes()
    # Asking for the default's epochs by number is the same request: nothing trains.
    same = ("--output", str(tmp_path / "same"), "--distill", "--epochs", str(given))
    code, printed, err = run_cli("export", "e2e", "--storage", str(storage), *same)
    assert code == 0 and "Distilled model found" in printed, err[-2000:]
    epochs = given + 1
    out = str(tmp_path / "longer")
    code, printed, err = run_cli("export", "e2e", "--storage", str(storage), "--output", out,
                                 "--distill", "--epochs", str(epochs))  # fmt: skip
    assert code == 0, err[-2000:]
    assert "Distilled model found" not in printed
    folder = exp / "distilled" / f"{board.loc[0, 'trial_id']}-top3-e{epochs}"
    record = json.loads((folder / "distill.json").read_text())
    assert record["epochs"] == record["config"]["max_epochs"] == epochs
    assert record["request"]["epochs"] == epochs
    assert f"distillation: {epochs}/{epochs} epochs" in err
    assert default.read_bytes() == before  # the default student is kept as it was


def test_the_readme_snippet_answers_like_predict_for_a_distilled_export(
    distilled, flowers, tmp_path
):
    _, out, _ = distilled
    assert_snippet_answers_like_predict(out, flowers, tmp_path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--distill", "--teacher-weight", "1.5"), "--teacher-weight 1.5 is not between 0 and 1"),
        (("--distill", "--teacher-weight", "nan"), "is not between 0 and 1"),
        (("--distill", "--ensemble", "1"), "a teacher ensemble needs at least 2 members"),
        (("--distill", "--refit"), "--distill and --refit cannot be combined"),
        (("--student", "efficientnet_lite1"), "--student goes with --distill"),
        (("--epochs", "4"), "--epochs goes with --distill"),
        (("--trust-state",), "--trust-state goes with --refit or --distill"),
        (("--distill", "--epochs", "0"), "--epochs: must be >= 1, got 0"),
        (("--distill", "--student", "vgg99"), "--student vgg99"),
        (("--distill", "--student", "../../x"), "--student ../../x"),
    ],
)
def test_bad_distill_requests_exit_2_with_one_message(finished, tmp_path, extra, message):
    _, storage, _ = finished
    args = ("--storage", str(storage), "--output", str(tmp_path / "d"))
    code, _, err = run_cli("export", "e2e", *args, *extra)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "d").exists()


MALFORMED = [
    '{"teacher": 5, "test_acc": 0.9}',
    '{"model": "x", "teacher": {"members": [{"rank": "a"}]}}',
    "[1, 2]",
    '{"test_acc": 1e999, "teacher": {"method": "top", "members": []}}',
    '{"rank": 1, "epochs": 2, "test_acc": "high"}',
    '[{"method": "top", "size": 3, "members": [{"rank": 1}], "val_acc": 0.9, "test_acc": 0.9}]',
    '[{"method": "top", "size": 1, "members": [], "val_acc": NaN, "test_acc": 0.9}]',
]


@pytest.mark.parametrize("record", MALFORMED)
@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("distilled/t-top3/distill.json", "distilled from"),
        ("refit/t/refit.json", "refit of rank"),
        ("ensembles.json", "ensemble of"),
    ],
)
def test_a_malformed_made_model_record_is_left_out_of_the_leaderboard(
    finished, tmp_path, record, where, says
):
    """Refit, distillation and ensemble records come from a shared folder: a record that
    is not one is left out of the leaderboard's made models, never a traceback."""
    import shutil

    _, _, exp = finished
    storage = tmp_path / "s"
    shutil.copytree(
        exp, storage / "e2e", ignore=shutil.ignore_patterns("distilled", "refit", "ensembles.json")
    )
    (storage / "e2e" / where).parent.mkdir(parents=True, exist_ok=True)
    (storage / "e2e" / where).write_text(record)
    code, table, err = run_cli("leaderboard", "e2e", "--storage", str(storage))
    assert code == 0 and "Traceback" not in err, err
    assert says not in table
