"""Export a ranked trial as a self-contained model folder, and predict with one.

An export folder holds:

- ``model.pt``: a plain state_dict of the stock architecture
  (``torchvision.models.resnet18(num_classes=N)`` etc., or
  ``EfficientNet.from_name("efficientnet-lite0", num_classes=N, image_size=S)``, or
  lite1 / lite2),
  readable with ``torch.load(..., weights_only=True)``;
- ``model.ts``: the same model as TorchScript (fp32, eval mode), usable with
  nothing but ``torch``;
- ``labels.json``: the class names in output-index order;
- ``config.json``: the trial configuration plus the preprocessing
  (``image_size``, ``resize``, ``mean``, ``std``) and where it came from.

An ensemble export (``--ensemble K``) has the same ``model.ts`` (the members'
averaged probabilities, as log-probabilities), ``labels.json`` and
``config.json`` (with an ``ensemble`` section), and one state_dict per member
under ``members/TRIAL_ID/model.pt``.

``predict`` reads only ``model.ts``, ``labels.json`` and ``config.json``.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuner._ensemble import Ensemble
from tuner._errors import UsageError
from tuner._inference import Preprocessing, RankedTrial, classify

MODEL_STATE = "model.pt"
MODEL_SCRIPT = "model.ts"
LABELS = "labels.json"
CONFIG = "config.json"
EXPORT_FILES = (MODEL_STATE, MODEL_SCRIPT, LABELS, CONFIG)
PREPROCESSING = (
    "RGB with EXIF orientation applied (JPEGs decoded with DCT downscaling to no less than "
    "resize px); shorter side resized to resize px (bilinear) and centre-cropped to a square; "
    "centre-cropped to image_size; scaled to [0, 1]; (x - mean) / std per channel"
)
# TorchScript and eager logits may differ by float rounding, never by more.
_TRACE_ATOL = 1e-4


def export_trial(trial: RankedTrial, output: Path) -> list[Path]:
    """Write the four export files of ``trial`` into ``output``; return their paths.

    The TorchScript model is checked against the checkpoint's model on a
    batch of random inputs before anything is written.
    """
    model = trial.model.float().eval()
    config = {
        **trial.config,
        **trial.preprocessing.to_dict(),
        "preprocessing": PREPROCESSING,
        "num_classes": len(trial.classes),
        "trial_id": trial.trial_id,
        "rank": trial.rank,
        "val_acc": trial.val_acc,
        "source_checkpoint": str(trial.checkpoint),
        "experiment": trial.experiment.display(),
    }
    states = {MODEL_STATE: model}
    return _write_export(output, model, trial.preprocessing, trial.classes, config, states)


def export_ensemble(ensemble: Ensemble, output: Path, test_acc: float | None) -> list[Path]:
    """Write an ensemble's export: one TorchScript ``model.ts`` averaging its members'
    probabilities, ``members/TRIAL_ID/model.pt`` state_dicts, labels and config."""
    first = ensemble.members[0]
    config = {
        **first.preprocessing.to_dict(),
        "preprocessing": PREPROCESSING,
        "num_classes": len(first.classes),
        "ensemble": {
            "method": ensemble.method,
            "val_acc": ensemble.val_acc,
            "test_acc": test_acc,
            "members": [
                {
                    "trial_id": m.trial_id,
                    "rank": m.rank,
                    "weight": w,
                    "val_acc": m.val_acc,
                    "model": m.config["model"],
                    "source_checkpoint": str(m.checkpoint),
                    "state_dict": f"members/{m.trial_id}/{MODEL_STATE}",
                }
                for m, w in zip(ensemble.members, ensemble.weights, strict=True)
            ],
        },
        "experiment": first.experiment.display(),
    }
    states = {f"members/{m.trial_id}/{MODEL_STATE}": m.model for m in ensemble.members}
    module = ensemble.module()
    return _write_export(output, module, first.preprocessing, first.classes, config, states)


def _write_export(
    output: Path,
    model: torch.nn.Module,
    prep: Preprocessing,
    classes: list[str],
    config: dict[str, Any],
    states: dict[str, torch.nn.Module],
) -> list[Path]:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {output}: {exc.strerror or exc}") from None
    size = prep.image_size
    with torch.no_grad(), _quiet_jit():
        traced = torch.jit.trace(model, torch.zeros(1, 3, size, size))
        probe = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
        if not torch.allclose(traced(probe), model(probe), atol=_TRACE_ATOL):
            raise RuntimeError(f"the TorchScript export to {output} disagrees with the model")
    writers: dict[str, Callable[[Path], object]] = {
        name: functools.partial(_save_state_dict, module) for name, module in states.items()
    }
    writers |= {
        MODEL_SCRIPT: lambda p: _save_script(traced, p),
        LABELS: lambda p: Path(p).write_text(json.dumps(classes, indent=2) + "\n"),
        CONFIG: lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"),
    }
    written = []
    for name, write in writers.items():
        path = output / name
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written


def _save_state_dict(model: torch.nn.Module, path: Path) -> None:
    torch.save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence TorchScript's deprecation notices: the export format is TorchScript by contract."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def _save_script(module: torch.jit.ScriptModule, path: Path) -> None:
    with _quiet_jit():
        torch.jit.save(module, str(path))


@dataclass
class ExportedModel:
    """An export folder loaded for prediction (TorchScript, labels, preprocessing)."""

    folder: Path
    model: torch.jit.ScriptModule
    labels: list[str]
    preprocessing: Preprocessing


def load_export(folder: Path) -> ExportedModel:
    """Read an export folder; UsageError if it is not one."""
    missing = [name for name in (MODEL_SCRIPT, LABELS, CONFIG) if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        raise UsageError(
            f"{folder} is not an exported model folder (missing {', '.join(missing)}); "
            "create one with: python -m tuner export NAME --output DIR"
        )
    try:
        labels = [str(c) for c in json.loads((folder / LABELS).read_text())]
        config = json.loads((folder / CONFIG).read_text())
        prep = Preprocessing(
            image_size=int(config["image_size"]),
            mean=tuple(float(v) for v in config["mean"]),
            std=tuple(float(v) for v in config["std"]),
        )
        with _quiet_jit():
            model = torch.jit.load(str(folder / MODEL_SCRIPT), map_location="cpu")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UsageError(
            f"{folder} is not a readable export ({type(exc).__name__}: {exc})"
        ) from None
    model.eval()
    return ExportedModel(folder=folder, model=model, labels=labels, preprocessing=prep)


def predict_images(
    exported: ExportedModel, images: Sequence[str], top: int
) -> list[dict[str, Any]]:
    """Top-``top`` classes with probabilities for each image, in the order given.

    Each entry is ``{"image", "predictions": [{"class", "probability"}]}``, or
    ``{"image", "error"}`` for an image that could not be read.
    """
    classified = classify(exported.model, images, exported.preprocessing)
    probs = classified.logits.softmax(1)
    k = min(top, len(exported.labels))
    results: list[dict[str, Any]] = [
        {"image": image, "error": classified.failed.get(i, "")} for i, image in enumerate(images)
    ]
    for row, i in enumerate(classified.ok):
        values, indices = probs[row].topk(k)
        predictions = [
            {"class": exported.labels[int(j)], "probability": float(v)}
            for v, j in zip(values, indices, strict=True)
        ]
        results[i] = {"image": images[i], "predictions": predictions}
    return results


def format_predictions(results: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """Human-readable predictions (stdout) and one error line per failed image (stderr)."""
    lines: list[str] = []
    errors: list[str] = []
    for result in results:
        if "error" in result:
            errors.append(f"{result['image']}: error: {result['error']}")
            continue
        lines.append(result["image"])
        lines += [f"  {p['probability']:7.2%}  {p['class']}" for p in result["predictions"]]
    return "\n".join(lines), errors
