"""The training knobs schedule / warmup_epochs, lr_decay and ema_decay, on real photos with
real weights (EfficientNet-Lite0 from its package, 32 px): each default trains exactly as
before the knob existed, each non-default changes training as it says, and a resumed trial
continues as if never stopped."""

import itertools
import math

import pytest
import torch
from conftest import decoded, fit_reports

from trainables import (
    TrialConfig,
    build_inputs,
    choose_precision,
)
from trainables.models._models import params_by_depth, stages
from trainables.train._optim import WeightAverage, make_optimizer
from trainables.train._train import Training, evaluate, train_epoch
from tuner.results._inference import model_from_state

BASE = dict(
    model="efficientnet_lite0",
    pretrained=True,
    image_size=32,
    batch_size=8,
    lr=0.01,
    optimizer="sgd",
    step_size=1,
    gamma=0.5,
    aug_strength=0.3,
    max_epochs=2,
    seed=1,
)
DEFAULTS = dict(schedule="step", warmup_epochs=0, lr_decay=1.0, ema_decay=0.0)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photos(small_flowers):
    return decoded(small_flowers, 32)


run = fit_reports


def start(cfg, n_classes=5):
    return Training.start(cfg, n_classes, choose_precision(cfg.precision, CPU, cfg.model))


def lrs(training, epochs):
    """The lr each epoch trains at (the scheduler stepped once per epoch, as fit does)."""
    out = []
    for _ in range(epochs):
        out.append(training.lr)
        training.optimizer.step()  # no gradients: changes nothing, keeps torch's order check
        training.scheduler.step()
    return out


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def legacy_start(cfg, n_classes=5):
    """Training as it was built before the knobs: one SGD group over the trainable
    parameters in model order, a StepLR, no weight average."""
    training = start(cfg.replace(**DEFAULTS), n_classes)
    params = [p for p in training.model.parameters() if p.requires_grad]
    training.optimizer = make_optimizer(cfg, params)
    training.scheduler = torch.optim.lr_scheduler.StepLR(
        training.optimizer, cfg.step_size, cfg.gamma
    )
    training.ema = None
    return training


# --- defaults: the old code path, bit for bit -------------------------------------------


@pytest.mark.parametrize("depth", [0, 2])
def test_default_knobs_build_the_old_optimizer_schedule_and_no_average(depth):
    cfg = TrialConfig.from_dict({**BASE, "freeze_depth": depth})
    explicit = TrialConfig.from_dict({**BASE, "freeze_depth": depth, **DEFAULTS})
    for training in (start(cfg), start(explicit)):
        # lr_decay 1: one group, the trainable parameters in model order.
        assert len(training.optimizer.param_groups) == 1
        trainable = [p for p in training.model.parameters() if p.requires_grad]
        assert [id(p) for p in training.params] == [id(p) for p in trainable]
        # step without warm-up: a plain StepLR.
        assert type(training.scheduler) is torch.optim.lr_scheduler.StepLR
        # ema_decay 0: no averaged model; validation scores the live one.
        assert training.ema is None and training.scored is training.model


def test_default_knobs_train_bit_identically_to_the_old_setup(photos):
    cfg = TrialConfig.from_dict({**BASE, "max_epochs": 1})
    explicit = TrialConfig.from_dict({**BASE, "max_epochs": 1, **DEFAULTS})
    (metrics, state), = run(explicit, photos)  # fmt: skip
    (absent_metrics, absent), = run(cfg, photos)  # fmt: skip
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert metrics[key] == absent_metrics[key]
    assert same_weights(state["model"], absent["model"])
    # No EMA entry in the checkpoint: "model" is the trained weights themselves.
    assert "raw_model" not in state and "ema_updates" not in state
    # The same epoch through the old construction (one group, StepLR, no average).
    torch.manual_seed(cfg.seed)
    legacy = legacy_start(cfg)
    inputs = build_inputs(cfg, photos, legacy.model, legacy.precision)
    train_epoch(legacy, inputs, 1)
    val_loss, val_acc = evaluate(legacy, inputs)
    assert same_weights(legacy.model.state_dict(), state["model"])
    assert (val_loss, val_acc) == (metrics["val_loss"], metrics["val_acc"])


# --- schedule and warm-up ---------------------------------------------------------------


def test_cosine_anneals_to_zero_at_max_epochs_and_warmup_ramps_up():
    lr = BASE["lr"]
    cosine = start(TrialConfig.from_dict({**BASE, "schedule": "cosine", "max_epochs": 6}))
    assert type(cosine.scheduler) is not torch.optim.lr_scheduler.StepLR
    seq = lrs(cosine, 6)
    assert seq == pytest.approx([lr * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(6)])
    assert seq[0] == pytest.approx(lr) and seq[-1] < 0.1 * lr  # near 0 at the last epoch
    assert all(a > b for a, b in itertools.pairwise(seq))
    # Warm-up: epoch k <= W trains at k / (W + 1) of the lr, then the schedule starts.
    step = start(TrialConfig.from_dict({**BASE, "warmup_epochs": 2, "max_epochs": 5}))
    assert lrs(step, 5) == pytest.approx([lr / 3, 2 * lr / 3, lr, lr / 2, lr / 4])
    warm = start(TrialConfig.from_dict({**BASE, "schedule": "cosine", "warmup_epochs": 1,
                                        "max_epochs": 3}))  # fmt: skip
    assert lrs(warm, 3) == pytest.approx([lr / 2, lr, lr / 2])


def test_cosine_with_warmup_and_lr_decay_resumes_on_the_same_schedule(photos):
    cfg = TrialConfig.from_dict(
        {**BASE, "schedule": "cosine", "warmup_epochs": 1, "lr_decay": 0.5, "max_epochs": 3,
         "freeze_depth": 2}
    )  # fmt: skip
    straight = run(cfg, photos)
    lr = cfg.lr
    assert [m["lr"] for m, _ in straight] == pytest.approx([lr / 2, lr, lr / 2])
    assert straight[0][0]["lr"] < cfg.lr
    resumed = run(cfg, photos, resume_state=straight[0][1])
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    for (a, sa), (b, sb) in zip(straight[1:], resumed, strict=True):
        assert a["lr"] == b["lr"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        groups = [g["lr"] for g in sb["optimizer"]["param_groups"]]
        assert groups == [g["lr"] for g in sa["optimizer"]["param_groups"]]
        assert sb["scheduler"]["last_epoch"] == sa["scheduler"]["last_epoch"]
    assert same_weights(straight[-1][1]["model"], resumed[-1][1]["model"])


def test_a_checkpoint_resumed_under_a_new_lr_trains_at_it_on_the_same_schedule(photos):
    """PBT's exploit and explore: another trial's checkpoint, resumed with a perturbed lr
    and weight decay, trains from there at the new values, its schedule's position kept
    (the warm-up and per-stage decay rescaled, not restarted)."""
    cfg = TrialConfig.from_dict(
        {**BASE, "schedule": "cosine", "warmup_epochs": 1, "lr_decay": 0.5, "max_epochs": 3,
         "freeze_depth": 2, "weight_decay": 1e-5}
    )  # fmt: skip
    straight = run(cfg, photos)
    perturbed = TrialConfig.from_dict({**cfg.to_dict(), "lr": cfg.lr * 0.8, "weight_decay": 1e-4})
    resumed = run(perturbed, photos, resume_state=straight[0][1])
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    for (a, sa), (b, sb) in zip(straight[1:], resumed, strict=True):
        assert b["lr"] == pytest.approx(a["lr"] * 0.8)
        groups = [g["lr"] for g in sb["optimizer"]["param_groups"]]
        assert groups == pytest.approx([g["lr"] * 0.8 for g in sa["optimizer"]["param_groups"]])
        assert {g["weight_decay"] for g in sb["optimizer"]["param_groups"]} == {1e-4}
    assert not same_weights(straight[-1][1]["model"], resumed[-1][1]["model"])
    # Resumed under its own config, nothing changes (the plain resume above).
    again = run(cfg, photos, resume_state=straight[0][1])
    assert [m["lr"] for m, _ in again] == [m["lr"] for m, _ in straight[1:]]


# --- layer-wise lr decay ----------------------------------------------------------------


def test_lr_decay_gives_each_stage_below_the_head_a_smaller_lr(photos):
    cfg = TrialConfig.from_dict({**BASE, "lr_decay": 0.5, "freeze_depth": 2, "max_epochs": 1})
    training = start(cfg)
    groups = training.optimizer.param_groups
    # Head, stage 4, stage 3 train; stages 1-2 and the stem are frozen: not in the optimizer.
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.005, 0.0025])
    assert training.lr == cfg.lr  # the reported lr is the head's
    net = training.model
    stage4 = {id(p) for m in stages(net, cfg.model)[4] for p in m.parameters()}
    stage3 = {id(p) for m in stages(net, cfg.model)[3] for p in m.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(net._fc.weight), id(net._fc.bias)}
    assert {id(p) for p in groups[1]["params"]} == stage4
    assert {id(p) for p in groups[2]["params"]} == stage3
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for p in training.params} == trainable
    # Every parameter has one depth; the head alone is at depth 0.
    depths = params_by_depth(net, cfg.model)
    assert sum(len(g) for g in depths) == len(list(net.parameters())) and len(depths) == 6
    # It changes training: the lower stages move less than with one lr for all.
    (_, decayed), = run(cfg, photos)  # fmt: skip
    (_, flat), = run(cfg.replace(lr_decay=1.0), photos)  # fmt: skip
    assert [g["lr"] for g in decayed["optimizer"]["param_groups"]] == pytest.approx(
        [0.005, 0.0025, 0.00125]  # StepLR(1, 0.5) after the epoch, in every group
    )
    first = start(cfg).model.state_dict()
    key = "_blocks.6._project_conv.weight"  # in stage 3
    moved = (decayed["model"][key] - first[key]).norm()
    assert 0 < moved < (flat["model"][key] - first[key]).norm()


# --- weight average ---------------------------------------------------------------------


def test_weight_average_follows_the_live_weights_with_a_warmed_up_decay():
    live = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(live, 0.9)
    before = live[0].weight.detach().clone()
    with torch.no_grad():
        live[0].weight.add_(1.0)
        live[1].running_mean.fill_(3.0)
    average.update()  # decay min(0.9, 2 / 11)
    d = 2 / 11
    assert torch.allclose(average.model[0].weight, d * before + (1 - d) * live[0].weight)
    assert torch.equal(average.model[1].running_mean, live[1].running_mean)  # copied
    for _ in range(200):
        average.update()
    assert average.updates == 201 and torch.allclose(average.model[0].weight, live[0].weight)
    assert not any(p.requires_grad for p in average.model.parameters())


def test_ema_is_what_validation_scores_and_the_checkpoint_holds(photos):
    # Frozen to stage 3 without augmentation: the trainable parts run on cached activations.
    cfg = TrialConfig.from_dict(
        {**BASE, "ema_decay": 0.9, "freeze_depth": 3, "aug_strength": 0.0, "max_epochs": 2}
    )
    reports = run(cfg, photos)
    metrics, state = reports[-1]
    ema, raw = state["model"], state["raw_model"]
    n = len(photos.train_y)
    assert n % cfg.batch_size != 1  # else the one-photo last batch is dropped
    steps = math.ceil(n / cfg.batch_size)
    assert state["ema_updates"] == 2 * steps
    assert not torch.equal(ema["_fc.weight"], raw["_fc.weight"])  # averaged
    assert not torch.equal(ema["_blocks.12._project_conv.weight"],  # stage 4 trains
                           raw["_blocks.12._project_conv.weight"])  # fmt: skip
    assert torch.equal(ema["_blocks.6._project_conv.weight"],  # frozen: the same
                       raw["_blocks.6._project_conv.weight"])  # fmt: skip
    assert torch.equal(ema["_bn1.running_var"], raw["_bn1.running_var"])  # buffers copied
    # The reported val metrics are the average's, not the live weights'.
    training = start(cfg)
    training.restore(state)
    assert same_weights(training.model.state_dict(), raw)
    assert same_weights(training.ema.model.state_dict(), ema)
    inputs = build_inputs(cfg, photos, training.model, training.precision)
    assert inputs.kind == "activations"
    assert evaluate(training, inputs) == (metrics["val_loss"], metrics["val_acc"])
    training.ema = None
    assert evaluate(training, inputs)[0] != metrics["val_loss"]
    # What evaluate / export load from the checkpoint is the average.
    loaded = model_from_state(state, len(photos.classes)).state_dict()
    assert same_weights(loaded, ema)
    # Without the knob the run differs: validation scores the live weights.
    plain = run(cfg.replace(ema_decay=0.0), photos)[-1][1]
    assert same_weights(plain["model"], raw)


def test_ema_resumes_both_the_average_and_the_live_weights(photos):
    cfg = TrialConfig.from_dict({**BASE, "ema_decay": 0.8, "freeze_depth": 2, "max_epochs": 2})
    straight = run(cfg, photos)
    resumed = run(cfg, photos, resume_state=straight[0][1])
    (a, sa), (b, sb) = straight[-1], resumed[-1]
    assert sb["epoch"] == 2 and sb["ema_updates"] == sa["ema_updates"]
    assert same_weights(sa["raw_model"], sb["raw_model"])
    assert same_weights(sa["model"], sb["model"])
    assert (a["val_loss"], a["val_acc"]) == (b["val_loss"], b["val_acc"])
