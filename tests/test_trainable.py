"""The training loop itself: metrics, checkpoints, resume, divergence."""

import math
import shutil

import numpy as np
import pytest
import torch
from conftest import METRIC_KEYS, decoded, fit_reports

import trainables.train._inputs as inputs_module
from trainables import (
    TrialConfig,
    build_inputs,
    build_model,
    choose_precision,
    decode_for_refit,
    fit,
    freeze,
    prepare_data,
    scan_folder,
)
from trainables.data._folders import resize_for
from trainables.train._features import AUGMENTED_VIEWS, cache_part, prune, views_for


@pytest.fixture
def cache(synthetic):
    return decoded(synthetic, 32)


run = fit_reports


CFG = dict(
    model="resnet18",
    pretrained=False,
    image_size=32,
    batch_size=8,
    lr=0.05,
    optimizer="sgd",
    step_size=1,
    gamma=0.5,
    aug_strength=0.5,
    max_epochs=3,
    seed=3,
)


def test_reports_every_epoch_with_metrics_and_full_checkpoint(cache):
    reports = run(TrialConfig.from_dict(CFG), cache)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    for metrics, state in reports:
        assert set(metrics) >= METRIC_KEYS
        assert 0.0 <= metrics["val_acc"] <= 1.0 and metrics["images_per_s"] > 0
        assert state["epoch"] == metrics["epoch"]
        assert {"model", "optimizer", "scheduler", "rng_cpu", "config", "classes"} <= set(state)
    # StepLR(step_size=1, gamma=0.5) is stepped once per epoch.
    assert [m["lr"] for m, _ in reports] == pytest.approx([0.05, 0.025, 0.0125])


def test_checkpoint_folders_a_killed_worker_left_are_swept_at_a_trials_start(
    cache, tmp_path, monkeypatch
):
    """A worker killed between writing a checkpoint folder and removing it leaves it (a
    checkpoint's size): a trial's start removes those of processes that are gone and its
    own process's; a running process's, a link and other names are left."""
    import os
    import subprocess
    import sys

    from trainables.train._checkpoint import sweep_temporary_folders

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    folders: list[str] = []

    def report(metrics: dict, folder) -> None:
        folders.append(folder.name)  # left behind, as by a worker killed after writing it

    fit(TrialConfig.from_dict(CFG | {"max_epochs": 1}), cache, report, threads=1)
    assert [f.startswith(f"tuner-ckpt-{os.getpid()}-") for f in folders] == [True]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp / f"tuner-restore-{gone}-x").mkdir()  # a killed worker's
    running = tmp / f"tuner-ckpt-{os.getppid()}-y"  # a live process's: in use
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    (tmp / f"tuner-ckpt-{gone}-link").symlink_to(victim)
    for kept in (running, tmp / "tuner-ckpt-other"):
        kept.mkdir()
    assert sweep_temporary_folders() == 2
    assert sorted(p.name for p in tmp.glob("tuner-*")) == sorted(
        [running.name, "tuner-ckpt-other", f"tuner-ckpt-{gone}-link"]
    )
    assert (victim / "keep").read_text() == "x"


def test_resumes_from_its_checkpoint_at_the_next_epoch_with_identical_results(cache):
    cfg = TrialConfig.from_dict(CFG)
    straight = run(cfg, cache)
    resumed = run(cfg, cache, resume_state=straight[0][1])
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    for (a, _), (b, _) in zip(straight[1:], resumed, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_acc"] == b["val_acc"] and a["lr"] == b["lr"]


def test_non_finite_loss_ends_the_trial_as_diverged(cache):
    cfg = TrialConfig.from_dict({**CFG, "lr": 1e12, "max_epochs": 4, "aug_strength": 0.0})
    reports = run(cfg, cache)
    last = reports[-1][0]
    assert last["diverged"] is True
    assert len(reports) < 4
    assert math.isnan(last["train_loss"]) and last["val_acc"] == 0.0


def test_learns_something_on_separable_photos(cache):
    cfg = TrialConfig.from_dict(
        {
            **CFG,
            "model": "efficientnet_lite0",
            "pretrained": True,
            "freeze_depth": 3,
            "optimizer": "adam",
            "lr": 0.01,
            "max_epochs": 3,
            "aug_strength": 0.0,
        }
    )
    reports = run(cfg, cache)
    assert max(m["val_acc"] for m, _ in reports) > 0.5  # chance is 1/3


@pytest.mark.parametrize(
    ("model", "depth", "frozen_param", "lr"),
    [
        ("efficientnet_lite0", 4, "_conv_head.weight", 0.01),  # head only, on pooled features
        # Stage 4 on stage 3's maps. At 32 px it trains BatchNorm on 1x1 maps, which
        # blows float rounding up into different training: small steps keep it linear.
        ("efficientnet_lite0", 3, "_blocks.10._project_conv.weight", 1e-4),
        ("resnet18", 2, "layer2.0.conv1.weight", 0.01),  # stages 3-4 on stage 2's maps
    ],
)
def test_frozen_activations_are_computed_once_and_train_like_the_full_network(
    cache, tmp_path, monkeypatch, environ, model, depth, frozen_param, lr
):
    environ.set("TUNER_CACHE", str(tmp_path))
    environ.delete("TUNER_FEATURE_CACHE")
    cfg = TrialConfig.from_dict(
        {
            **CFG,
            "model": model,
            "pretrained": model == "efficientnet_lite0",  # ResNet weights cannot be downloaded
            "freeze_depth": depth,
            "aug_strength": 0.0,
            # SGD: Adam's normalised steps would blow float rounding up to full-size updates.
            "optimizer": "sgd",
            "lr": lr,
            "max_epochs": 2,
        }
    )
    assert cache_part(cfg) == (6 if depth == 4 else depth + 1)
    assert views_for(cfg) == 0 and views_for(cfg.replace(aug_strength=0.1)) == 2  # max_epochs
    assert cache_part(cfg.replace(freeze_depth=0)) is None

    cached = run(cfg, cache)
    stored = list((tmp_path / "features").glob("*-plain.npy"))
    # Train and val stored on disk, only with pretrained weights (the key names them).
    assert len(stored) == 2 * int(cfg.pretrained)
    again = run(cfg, cache)  # loads the stored activations, or computes them again
    # The same training through the whole network every epoch gives the same result.
    monkeypatch.setattr(inputs_module, "cache_part", lambda cfg: None)
    full = run(cfg, cache)
    # (Up to float rounding: the frozen pass runs in other batch sizes.)
    for a, b, c in zip(cached, again, full, strict=True):
        assert a[0]["train_loss"] == pytest.approx(b[0]["train_loss"], rel=1e-6)
        for key in ("train_loss", "val_loss"):
            assert a[0][key] == pytest.approx(c[0][key], rel=1e-2)
    # The frozen part is byte-identical to its start; the part after it trained.
    first, last = cached[0][1]["model"], cached[-1][1]["model"]
    assert torch.equal(first[frozen_param], last[frozen_param])
    head = "_fc.weight" if model == "efficientnet_lite0" else "fc.weight"
    assert not torch.equal(first[head], last[head])


def test_activations_over_the_size_limit_are_not_cached(cache, tmp_path, monkeypatch, environ):
    environ.set("TUNER_CACHE", str(tmp_path))
    environ.delete("TUNER_FEATURE_CACHE")
    calls = []
    real = inputs_module._compute
    monkeypatch.setattr(inputs_module, "_compute", lambda *a: calls.append(1) or real(*a))
    cfg = TrialConfig.from_dict(
        {**CFG, "model": "efficientnet_lite0", "freeze_depth": 1, "aug_strength": 0.0}
    )
    run(cfg.replace(max_epochs=1), cache)
    assert calls == [1, 1]  # val, then train
    # Stage 1's maps at 32 px: 24 x 8 x 8 floats per photo, ~6 KiB; 1 KiB allowed.
    environ.set("TUNER_FEATURE_CACHE_MB", str(1 / 1024))
    assert prepared(cfg, cache, "cpu").kind == "images"
    reports = run(cfg.replace(max_epochs=1), cache)
    assert calls == [1, 1] and len(reports) == 1


def test_disk_cache_keeps_the_most_recently_used_entries(tmp_path):
    import os

    for age, name in enumerate(["new", "mid", "old"]):
        path = tmp_path / f"{name}.npy"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1e9 - age * 100, 1e9 - age * 100))
    removed = prune(tmp_path, budget_bytes=2500)
    assert [p.name for p in removed] == ["old.npy"]
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["mid.npy", "new.npy"]


def prepared(cfg, data, device):
    """The trial's inputs as ``fit`` would prepare them on ``device``."""
    model = build_model(cfg.model, len(data.classes), cfg.pretrained, cfg.image_size)
    freeze(model, cfg.model, cfg.freeze_depth)
    precision = choose_precision(cfg.precision, torch.device(device), cfg.model)
    return build_inputs(cfg, data, model.to(device), precision)


LITE = {**CFG, "model": "efficientnet_lite0", "pretrained": True, "optimizer": "adam", "lr": 1e-3}


def test_a_refit_copies_the_searchs_activations_and_runs_only_the_test_photos(
    synthetic, tmp_path, monkeypatch, environ
):
    """A refit trains on the search's train photos then its val photos: its train slot is
    put together from the two entries the search's trial kept, not computed again."""
    environ.set("TUNER_CACHE", str(tmp_path))
    environ.delete("TUNER_FEATURE_CACHE")
    split, search = prepare_data(scan_folder(synthetic), resize_for(32), seed=0, test_fraction=0.2)
    refit = decode_for_refit(split, resize_for(32))
    assert refit.key == search.key and refit.train_parts == (len(split.train), len(split.val))
    computed: list[int] = []
    real = inputs_module._compute
    monkeypatch.setattr(
        inputs_module, "_compute", lambda *a: computed.append(len(a[1])) or real(*a)
    )
    cfg = TrialConfig.from_dict({**LITE, "freeze_depth": 3, "aug_strength": 0.0})
    trial = prepared(cfg, search, "cpu")
    assert computed == [len(split.val), len(split.train)]
    inputs = prepared(cfg, refit, "cpu")
    assert computed[2:] == [len(split.test)]  # only the photos no trial saw
    assert inputs.kind == "activations" and len(inputs.train) == len(refit.train_y)
    searched = np.concatenate([trial.train.array, trial.val.array])
    assert np.array_equal(inputs.train.array, searched)
    assert prepared(cfg, refit, "cpu").train.array.shape == searched.shape
    assert computed[3:] == []  # the next refit or distillation maps the whole slot
    # What the frozen prefix gives on the refit's rows, computed in one go in memory.
    environ.set("TUNER_FEATURE_CACHE", "off")
    direct = prepared(cfg, refit, "cpu")
    assert computed[3:] == [len(split.test), len(refit.train_y)]
    assert np.allclose(direct.train.array, searched, rtol=1e-4, atol=1e-5)
    # Another depth is another entry: its activations are computed, part by part.
    environ.delete("TUNER_FEATURE_CACHE")
    prepared(cfg.replace(freeze_depth=2), refit, "cpu")
    assert computed[5:] == [len(split.test), len(split.train), len(split.val)]
    # Activations computed under bf16 autocast are others again, not the fp32 ones.
    bf16 = prepared(cfg.replace(precision="bf16"), search, "cpu")
    assert computed[8:] == [len(split.val), len(split.train)]
    assert not np.array_equal(bf16.train.array, trial.train.array)
    error = np.linalg.norm(bf16.train.array - trial.train.array)
    assert error < 0.2 * np.linalg.norm(trial.train.array)  # the same prefix, rounded


def test_a_deeper_frozen_trial_runs_only_its_remaining_frozen_stages_on_a_shallower_entry(
    synthetic, tmp_path, monkeypatch, environ
):
    """A head-only trial (depth 4) after stage-3 and stage-2 trials of the same model and
    photos runs stage 4 and the pooling on the stage-3 entry, not the whole prefix on the
    photos; what it gets is what the photos give."""
    environ.set("TUNER_CACHE", str(tmp_path))
    environ.delete("TUNER_FEATURE_CACHE")
    _, search = prepare_data(scan_folder(synthetic), resize_for(32), seed=0, test_fraction=0.2)
    sources: list[tuple[int, tuple[int, ...]]] = []  # (rows, what each row is) per computation
    real = inputs_module._compute
    monkeypatch.setattr(
        inputs_module, "_compute",
        lambda *a: sources.append((len(a[1]), a[1].shape[1:])) or real(*a),
    )  # fmt: skip
    cfg = TrialConfig.from_dict({**LITE, "freeze_depth": 2, "aug_strength": 0.0})
    n_val, n_train = len(search.val_rows), len(search.train_rows)
    prepared(cfg, search, "cpu")
    stage3 = prepared(cfg.replace(freeze_depth=3), search, "cpu")
    maps2 = prepared(cfg, search, "cpu").train.array.shape[1:]  # stored: nothing computed
    maps3 = stage3.train.array.shape[1:]
    assert len(maps2) == len(maps3) == 3 and maps2 != maps3
    photos = search.pixels.array().shape[1:]
    # Depth 3 started from depth 2's entry, the only shallower one then.
    assert sources == [(n_val, photos), (n_train, photos), (n_val, maps2), (n_train, maps2)]
    head = prepared(cfg.replace(freeze_depth=4), search, "cpu")
    assert sources[4:] == [(n_val, maps3), (n_train, maps3)]  # the deepest one
    assert head.kind == "activations" and head.train.array.ndim == 2  # pooled features
    # The same as the whole prefix on the photos, computed in memory.
    environ.set("TUNER_FEATURE_CACHE", "off")
    direct = prepared(cfg.replace(freeze_depth=4), search, "cpu")
    assert sources[6:] == [(n_val, photos), (n_train, photos)]
    assert np.allclose(head.train.array, direct.train.array, rtol=1e-4, atol=1e-5)
    assert np.allclose(head.val.array, direct.val.array, rtol=1e-4, atol=1e-5)
    # Another precision's prefix never starts from fp32 entries.
    environ.delete("TUNER_FEATURE_CACHE")
    prepared(cfg.replace(freeze_depth=4, precision="bf16"), search, "cpu")
    assert sources[8:] == [(n_val, photos), (n_train, photos)]


def test_augmented_trials_train_on_cached_views_one_drawn_per_photo(cache, tmp_path, environ):
    environ.set("TUNER_CACHE", str(tmp_path))
    environ.delete("TUNER_FEATURE_CACHE")
    cfg = TrialConfig.from_dict({**LITE, "freeze_depth": 3, "aug_strength": 0.5, "max_epochs": 6})
    inputs = prepared(cfg, cache, "cpu")
    n, views = len(cache.train_y), AUGMENTED_VIEWS
    assert inputs.kind == "views" and inputs.start == cache_part(cfg) and inputs.views is not None
    assert views_for(cfg.replace(max_epochs=2)) == 2  # never more views than epochs
    idx = torch.arange(n)
    # Epoch k <= V trains on view k of every photo, computed as it is first asked for,
    # the same whatever the batch order.
    first, labels = inputs.train_batch(idx.flip(0), torch.Generator().manual_seed(1), epoch=1)
    assert torch.equal(labels, torch.from_numpy(cache.train_y).flip(0))
    assert int(inputs.views.done.sum()) == n
    again, _ = prepared(cfg, cache, "cpu").train_batch(idx, torch.Generator(), epoch=1)
    assert torch.allclose(first.flip(0), again, atol=1e-2)
    second, _ = inputs.train_batch(idx, torch.Generator(), epoch=2)
    assert not torch.allclose(second, again, atol=1e-2)  # another augmented view
    assert not list((tmp_path / "features").glob("*-views.npy"))  # kept on disk once complete
    for epoch in range(3, views + 1):
        inputs.train_batch(idx, torch.Generator(), epoch)
    assert bool(inputs.views.done.all()) and inputs.views.store.dtype == torch.float16
    assert len(list((tmp_path / "features").glob("*-views.npy"))) == 1
    # Later epochs draw one of the V views per photo, seeded.
    late = [
        inputs.train_batch(idx, torch.Generator().manual_seed(s), views + 1)[0] for s in (5, 5, 6)
    ]
    assert torch.equal(late[0], late[1]) and not torch.equal(late[0], late[2])
    from_views = inputs.views.store.float()
    assert all(
        any(torch.equal(late[0][i], from_views[v, i]) for v in range(views)) for i in range(0, n, 7)
    )
    # The next trial loads every view from disk and computes none.
    loaded = prepared(cfg, cache, "cpu")
    assert loaded.views is not None and bool(loaded.views.done.all())
    assert torch.equal(loaded.views.store, inputs.views.store)
    assert prepared(cfg.replace(aug_strength=0.0), cache, "cpu").kind == "activations"
    reports = run(cfg.replace(max_epochs=2), cache)
    assert [m["epoch"] for m, _ in reports] == [1, 2]


@pytest.mark.parametrize("aug", [0.0, 0.5])
def test_inputs_land_on_the_trials_device_whatever_device_prepared_them(
    cache, tmp_path, environ, aug
):
    """Activations computed on the CPU and mapped from disk reach the trial's device batch by
    batch (the rows stay on the host).

    ``meta`` stands in for an accelerator on a machine without one: it holds
    tensors but no data, so a tensor left on the CPU shows up here.
    """
    environ.set("TUNER_CACHE", str(tmp_path))
    environ.delete("TUNER_FEATURE_CACHE")
    cfg = TrialConfig.from_dict({**LITE, "freeze_depth": 4, "aug_strength": aug})
    run(cfg, cache)  # computed on the CPU (every view in 3 epochs) and stored on disk
    on_cpu = prepared(cfg, cache, "cpu")
    assert on_cpu.kind == ("views" if aug else "activations")
    other = prepared(cfg, cache, "meta")  # loaded from disk for another device
    assert other.kind == on_cpu.kind and other.train.shape == on_cpu.train.shape
    for tensor in (other.train_labels, other.val_labels):
        assert tensor.device.type == "meta"
    x, labels = other.train_batch(torch.arange(4), torch.Generator().manual_seed(0), epoch=9)
    assert x.device.type == "meta" and labels.device.type == "meta"
    streamed = list(
        other.train_batches([torch.arange(4), torch.arange(4, 8)], torch.Generator(), 9)
    )
    assert [x.device.type for x, _ in streamed] == ["meta", "meta"]
    assert all(x.device.type == "meta" for x, _ in other.val_batches(5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("aug", [0.0, 0.5])
def test_cached_activation_trials_run_on_the_gpu(cache, tmp_path, environ, aug):
    environ.set("TUNER_CACHE", str(tmp_path))
    cfg = TrialConfig.from_dict({**LITE, "freeze_depth": 3, "aug_strength": aug})
    run(cfg.replace(max_epochs=1), cache)  # fills the disk cache on the default device
    reports = []

    def report(metrics, folder):
        reports.append(metrics)
        shutil.rmtree(folder, ignore_errors=True)  # the caller of fit owns it

    fit(cfg, cache, report, device=torch.device("cuda"))
    assert len(reports) == cfg.max_epochs


def test_cpu_passes_a_few_photos_at_a_time_give_what_whole_batches_give(
    cache, monkeypatch, environ
):
    """Frozen activations and the validation scores of a trial whose network takes the
    photos: computed 2 photos a pass (as at 320 px on a CPU) or 32, the same to rounding."""
    import trainables.train._batches as batches

    environ.set("TUNER_FEATURE_CACHE", "off")  # computed each time, in memory
    frozen = TrialConfig.from_dict({**LITE, "freeze_depth": 3, "aug_strength": 0.0})
    whole = prepared(frozen, cache, "cpu")
    plain = TrialConfig.from_dict({**LITE, "freeze_depth": 0, "max_epochs": 1})
    scored = run(plain, cache)[-1][0]
    passes: list[int] = []
    forward_batch = batches.forward_batch

    def counted(image_size, device, default):
        passes.append(forward_batch(image_size, device, default))
        return passes[-1]

    monkeypatch.setattr(batches, "CPU_BATCH_PIXELS", 2 * 32 * 32)
    import trainables.train._inputs as inputs_module
    import trainables.train._train as train_module

    monkeypatch.setattr(inputs_module, "forward_batch", counted)
    monkeypatch.setattr(train_module, "forward_batch", counted)
    few = prepared(frozen, cache, "cpu")
    assert passes == [2, 2]  # the val photos, then the train photos, 2 at a time
    for a, b in ((few.train.array, whole.train.array), (few.val.array, whole.val.array)):
        assert np.abs(a - b).max() < 1e-5 * np.abs(b).max()  # float rounding, no more
    again = run(plain, cache)[-1][0]
    assert passes[2:] == [2]  # the validation photos through the whole network
    assert again["val_acc"] == scored["val_acc"]
    assert again["val_loss"] == pytest.approx(scored["val_loss"], rel=1e-4)
