"""Distillation: one network trained to answer like the top-K ensemble, at one model's cost.

``tuner export NAME --output DIR --distill [--ensemble K] [--student MODEL]``:

1. **Teacher.** The ensemble of K ranked trials (``--ensemble-method``, as
   ``export --ensemble`` picks them): the weighted mean of their probabilities.
2. **Targets.** The teacher's class probabilities for every train and val photo (its
   centre crop, as validation scores it), mixed with the true label:
   ``w * teacher + (1 - w) * onehot`` with ``w = --teacher-weight`` (default
   :data:`TEACHER_WEIGHT`). No test photo is ever shown to the teacher. Each member
   runs only its trained part: its frozen prefix's activations come from the disk
   cache a refit of its configuration uses (:func:`trainables.predict_train`), shared
   by members of one model, depth and size and by the student when it is one of them.
3. **Student.** The rank-1 configuration (``--rank`` picks another; ``--student``
   another architecture from the registry, the rest of the configuration kept),
   trained like a refit on train + val for the epochs that trial was given
   (``max_epochs``; ``--epochs`` sets others): its best epoch is one noisy pick on
   the validation photos, and soft targets bear more epochs than hard labels do
   (``docs/performance.md``, the distilled student's epochs), as one Ray
   task on every CPU of one node, on those targets (cross-entropy with class
   probabilities; mixup / cutmix mix them as they mix labels). Its progress is shown an
   epoch at a time.
4. **Record.** The student's checkpoint and ``distill.json`` land in
   ``NAME/distilled/TRIAL_ID-METHODK[-STUDENT]-eEPOCHS[-wWEIGHT]/`` (``-wWEIGHT`` for a
   teacher weight other than the default): its ``test_acc`` on the test split, the
   teacher's members and the settings. The leaderboard lists it among the made models.
   Asking again with the same settings (the default epochs or the same number given) and
   teacher exports the model already trained; other settings never replace it. Folders without
   ``-eEPOCHS`` hold students of an earlier default (the trial's best epoch count);
   they stay listed and are never taken for a new request.

The export is a single model's (``model.pt``, ``model.onnx``, ``model.pt2``,
``model.ts``) with a ``distilled`` section in ``config.json``. Its test-time
augmentation (``--tta auto``) is chosen on the validation photos by the search
checkpoint of the student's trial (the student itself trained on them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from trainables import CheckpointError, ConfigError, DecodedSplit, TrialConfig, predict_train
from tuner._errors import UsageError
from tuner.results._ensemble import Ensemble, choose_ensemble
from tuner.results._inference import (
    Preprocessing,
    RankedTrial,
    load_checkpoint,
    load_ranked_trial,
    model_from_state,
)
from tuner.results._leaderboard import build_leaderboard
from tuner.results._refit import (
    checked_record,
    export_command,
    refit_data,
    train_on_train_val,
)
from tuner.storage import DISTILL_DIR, DISTILL_RECORD, Experiment

TEACHER_WEIGHT = 0.7
TEACHER_SIZE = 3


@dataclasses.dataclass(frozen=True)
class DistillRequest:
    """What ``export --distill`` was asked for."""

    rank: int = 1
    size: int = TEACHER_SIZE
    method: str = "top"
    student: str | None = None  # None: the ranked trial's own model
    teacher_weight: float = TEACHER_WEIGHT
    epochs: int | None = None  # None: the ranked trial's max_epochs

    def as_record(self) -> dict[str, Any]:
        """The request as ``distill.json`` keeps it."""
        return dataclasses.asdict(self)

    def check(self) -> None:
        if not 0.0 <= self.teacher_weight <= 1.0 or math.isnan(self.teacher_weight):
            raise UsageError(
                f"--teacher-weight {self.teacher_weight} is not between 0 and 1 (the share of "
                "the teacher's probabilities in each training target)"
            )
        if self.size < 2:
            raise UsageError(f"--ensemble {self.size}: a teacher ensemble needs at least 2 members")


def soft_targets(ensemble: Ensemble, data: DecodedSplit, weight: float) -> tuple[np.ndarray, float]:
    """``weight * teacher + (1 - weight) * onehot`` for every training row of ``data`` (a
    refit's cache: the train + val photos), the teacher being ``ensemble``'s weighted mean
    probability; and the teacher's accuracy on those photos."""
    total = float(sum(ensemble.weights))
    probs = np.zeros((len(data.train_y), len(data.classes)), dtype=np.float64)
    for member, w in zip(ensemble.members, ensemble.weights, strict=True):
        cfg = TrialConfig.from_dict(member.config)
        probs += predict_train(cfg, data, member.model) * (w / total)
    onehot = np.eye(len(data.classes))[data.train_y]
    targets = weight * probs + (1.0 - weight) * onehot
    accuracy = float((probs.argmax(1) == data.train_y).mean())
    return targets.astype(np.float32), accuracy


def _folder(trial_id: str, request: DistillRequest) -> str:
    """The student's folder, for a request whose ``epochs`` are resolved: one per teacher,
    student, epoch count and (where not the default) teacher weight."""
    student = f"-{request.student}" if request.student else ""
    # repr: two weights that differ anywhere never share a folder.
    weight = "" if request.teacher_weight == TEACHER_WEIGHT else f"-w{request.teacher_weight!r}"
    name = f"{trial_id}-{request.method}{request.size}{student}-e{request.epochs}{weight}"
    return f"{DISTILL_DIR}/{name}"


def _same(record: Any, request: dict[str, Any], members: list[dict[str, Any]]) -> bool:
    """Whether ``record`` (a ``distill.json`` read back: checked, not trusted) holds a
    model trained for ``request`` from the teacher ``members``, with what export reads."""
    try:
        numbers = (record["epochs"], record["rank"], record["n_test"], record["test_acc"],
                   record["wall_time_s"])  # fmt: skip
        return (
            record["request"] == request
            and record["teacher"]["members"] == members
            and isinstance(record["model"], str)
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in numbers)
        )
    except (KeyError, TypeError):
        return False


def student_config(trial: RankedTrial, student: str | None, epochs: int | None) -> dict[str, Any]:
    """The configuration the student trains with: ``trial``'s, for the epochs it was
    given (or ``epochs``), with the architecture ``student`` where given."""
    config = {**trial.config, "max_epochs": epochs or trial.config["max_epochs"]}
    if student is not None:
        config["model"] = student
    try:
        return TrialConfig.from_dict(config).to_dict()
    except ConfigError as exc:
        flag = f"--student {student}" if student is not None else f"--epochs {epochs}"
        raise UsageError(f"{flag}: {exc}") from None


def distill(
    exp: Experiment,
    request: DistillRequest,
    say: Callable[[str], None] = print,
    trust_state: bool = False,
) -> tuple[dict[str, Any], str, RankedTrial]:
    """Train (or find, when trained before with the same request) the distilled model of
    ``exp`` (see the module doc); its record, its folder, and the rank-R trial whose
    configuration it has (loaded once, for the caller's export)."""
    request.check()
    command = export_command(exp, request.rank, "--distill")
    saved = checked_record(exp, request.rank, trust_state, command)
    board = build_leaderboard(exp)
    trial = load_ranked_trial(exp, request.rank, board)
    config = student_config(trial, request.student, request.epochs)  # a registry model
    request = dataclasses.replace(request, epochs=int(config["max_epochs"]))
    ensemble = choose_ensemble(exp, board, request.size, request.method)
    members = [{"trial_id": m.trial_id, "rank": m.rank} for m in ensemble.members]
    folder = _folder(trial.trial_id, request)
    wanted = request.as_record()
    previous = exp.read_json(f"{folder}/{DISTILL_RECORD}")
    if _same(previous, wanted, members):
        say(f"Distilled model found in {exp.display(folder)} (same teacher and settings)")
        return previous, folder, trial
    split = exp.split()
    data = refit_data(exp, saved, say)
    ranks = ", ".join(f"rank {m.rank}" for m in ensemble.members)
    say(f"Teacher: the {request.method} ensemble of {len(members)} ({ranks}), val_acc "
        f"{ensemble.val_acc:.4f}; its probabilities for the {len(data.train_y)} train + val "
        "photos")  # fmt: skip
    targets, teacher_acc = soft_targets(ensemble, data, request.teacher_weight)
    del ensemble  # the training runs in a Ray task: free the members here
    data = dataclasses.replace(data, train_soft=targets)
    epochs = int(config["max_epochs"])
    say(
        f"Distilling into {config['model']} (the configuration of trial {trial.trial_id}, rank "
        f"{request.rank}): {epochs} epoch(s) on {len(targets)} train + val photos, targets "
        f"{request.teacher_weight:g} teacher + {1 - request.teacher_weight:g} true label"
    )
    scores, wall, resources = train_on_train_val(
        exp, saved, config, data, folder, "distillation", say
    )
    record = {
        "request": wanted,
        "trial_id": trial.trial_id,
        "rank": request.rank,
        "model": config["model"],
        "epochs": epochs,
        "config": config,
        "teacher": {
            "method": request.method,
            "members": members,
            "accuracy_on_train_val": teacher_acc,
        },
        "teacher_weight": request.teacher_weight,
        **scores,
        "n_train": len(targets),
        "n_test": len(split.test),
        "checkpoint": exp.display(folder),
        "wall_time_s": wall,
        "resources": resources,
    }
    exp.write_json(f"{folder}/{DISTILL_RECORD}", record)
    return record, folder, trial


def load_distilled(trial: RankedTrial, record: dict[str, Any], folder: str) -> RankedTrial:
    """``trial`` (the student's ranked trial) with the distilled model and checkpoint."""
    exp = trial.experiment
    try:
        state = load_checkpoint(exp, exp.display(folder))
    except (OSError, CheckpointError) as exc:
        raise UsageError(f"the distilled model in {exp.display(folder)} cannot be read: {exc}") \
            from None  # fmt: skip
    config = dict(state["config"])
    model = model_from_state(state, len(trial.classes))
    prep = Preprocessing.for_model(config["model"], config["image_size"])
    return dataclasses.replace(
        trial, model=model, checkpoint=exp.display(folder), config=config, val_acc=None,
        best_epoch=int(record["epochs"]), preprocessing=prep,
    )  # fmt: skip
