"""Export a ranked trial as a self-contained model folder, and predict with one.

An export folder holds:

- ``model.pt``: a plain state_dict of the stock architecture
  (``torchvision.models.resnet18(num_classes=N)`` etc., or
  ``EfficientNet.from_name("efficientnet-lite0", num_classes=N, image_size=S)``, or
  lite1 / lite2),
  readable with ``torch.load(..., weights_only=True)``;
- ``model.onnx`` (checked with onnxruntime) and ``model.pt2`` (a ``torch.export``
  program): the model with its input scaling, normalisation and softmax inside,
  taking ``uint8`` RGB ``N x 3 x S x S`` photos (resized and centre-cropped as
  ``config.json`` says) and returning float32 class probabilities; ``config.json``
  states that contract under ``deploy``;
- ``model.ts``: the model as TorchScript (fp32, eval mode) on normalised input,
  returning logits: what ``predict --trust-model`` runs (TorchScript is
  deprecated in current torch; it stays while that option uses it);
- ``labels.json``: the class names in output-index order;
- ``config.json``: the trial configuration plus the preprocessing
  (``image_size``, ``resize``, ``mean``, ``std``), where it came from (a distilled
  model: its teacher, under ``distilled``), and the test-time augmentation (``tta``:
  ``none`` or ``flip``, and ``tta_choice``: how it was chosen, see
  :mod:`tuner.results._tta`).

With ``tta: flip``, ``model.onnx``, ``model.pt2`` and ``model.ts`` average the
probabilities of the photo and its mirror inside the graph; ``model.pt`` stays the plain
state_dict and ``predict`` applies the flip average itself.

An ensemble export (``--ensemble K``) has the same ``model.ts`` (the members'
averaged probabilities, as log-probabilities), ``labels.json`` and
``config.json`` (with an ``ensemble`` section), and one state_dict per member
under ``members/TRIAL_ID/model.pt``.

``predict`` (:mod:`tuner.results._predict`) reads ``model.pt`` into the architecture
``config.json`` names, running no code from the folder.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from trainables import TRACE_ATOL, Deployed, export_program, write_onnx
from tuner._errors import UsageError
from tuner.results._ensemble import Ensemble
from tuner.results._inference import Preprocessing, RankedTrial
from tuner.results._tta import TtaChoice, apply_tta

MODEL_STATE = "model.pt"
MODEL_SCRIPT = "model.ts"
MODEL_ONNX = "model.onnx"
MODEL_PROGRAM = "model.pt2"
LABELS = "labels.json"
CONFIG = "config.json"
EXPORT_FILES = (MODEL_STATE, MODEL_ONNX, MODEL_PROGRAM, MODEL_SCRIPT, LABELS, CONFIG)
PREPROCESSING = (
    "RGB with EXIF orientation applied (JPEGs decoded with DCT downscaling to no less than "
    "resize px); shorter side resized to resize px (bilinear) and centre-cropped to a square; "
    "centre-cropped to image_size; scaled to [0, 1]; (x - mean) / std per channel"
)


def deploy_contract(prep: Preprocessing, n_classes: int, tta: str = "none") -> dict[str, Any]:
    """What ``model.onnx`` and ``model.pt2`` take and return (written to config.json)."""
    size = prep.image_size
    flip = (
        "; test-time augmentation inside: the mean over the photo and its horizontal mirror"
        if tta == "flip"
        else ""
    )
    return {
        "onnx": MODEL_ONNX,
        "torch_export": MODEL_PROGRAM,
        "input": {
            "name": "image",
            "dtype": "uint8",
            "layout": "NCHW",
            "shape": ["N", 3, size, size],
            "values": "RGB 0-255, the photo prepared as 'preprocessing' says up to the "
            "centre crop to image_size; scaling and normalisation are inside the model",
        },
        "output": {
            "name": "probabilities",
            "dtype": "float32",
            "shape": ["N", n_classes],
            "values": "class probabilities in labels.json order, summing to 1 (an ensemble: "
            f"the weighted mean of its members' probabilities){flip}",
        },
        "torchscript": f"{MODEL_SCRIPT}: logits of the normalised float32 input (an ensemble, "
        f"or test-time augmentation: the log of the averaged probabilities){flip}; run by "
        "predict --trust-model",
    }


def export_trial(
    trial: RankedTrial,
    output: Path,
    force: bool = False,
    tta: TtaChoice | None = None,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the export files of ``trial`` into ``output``; return their paths.

    The TorchScript model is checked against the checkpoint's model on a
    batch of random inputs before anything is written. ``tta`` (default: none, no key
    written) is recorded in config.json and built into the graphs; ``extra`` keys are
    added to config.json (a distilled model's ``distilled``).
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
        **(extra or {}),
    }
    states = {MODEL_STATE: model}
    prep = trial.preprocessing
    return _write_export(output, model, prep, trial.classes, config, states, force, tta)


def export_ensemble(
    ensemble: Ensemble,
    output: Path,
    test_acc: float | None,
    force: bool = False,
    tta: TtaChoice | None = None,
) -> list[Path]:
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
    prep, classes = first.preprocessing, first.classes
    return _write_export(output, module, prep, classes, config, states, force, tta)


def _write_export(
    output: Path,
    model: torch.nn.Module,
    prep: Preprocessing,
    classes: list[str],
    config: dict[str, Any],
    states: dict[str, torch.nn.Module],
    force: bool = False,
    tta: TtaChoice | None = None,
) -> list[Path]:
    size = prep.image_size
    mode = tta.mode if tta is not None else "none"
    model = apply_tta(model, mode)  # the graphs hold the test-time augmentation
    with torch.no_grad(), quiet_jit():
        traced = torch.jit.trace(model, torch.zeros(1, 3, size, size))
        probe = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
        if not torch.allclose(traced(probe), model(probe), atol=TRACE_ATOL):
            raise RuntimeError(f"the TorchScript export to {output} disagrees with the model")
    deployed = Deployed(model, prep.mean, prep.std).eval()
    program = export_program(deployed, size)  # one torch.export for the program and the ONNX file
    config = config | (tta.to_config() if tta is not None else {})
    config |= {"deploy": deploy_contract(prep, len(classes), mode)}
    writers: dict[str, Callable[[Path], object]] = {
        name: functools.partial(_save_state_dict, module) for name, module in states.items()
    }
    writers |= {
        MODEL_PROGRAM: lambda p: _save_program(program, p),
        MODEL_ONNX: lambda p: write_onnx(program, deployed, size, p),
        MODEL_SCRIPT: lambda p: _save_script(traced, p),
        LABELS: lambda p: Path(p).write_text(json.dumps(classes, indent=2) + "\n"),
        CONFIG: lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"),
    }
    with staged(output, force) as staging:
        for name, write in writers.items():
            path = staging / name
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write(path)
            except OSError as exc:
                raise UsageError(f"cannot write {output / name}: {exc.strerror or exc}") from None
    return [output / name for name in writers]


def check_output(output: Path, force: bool) -> None:
    """UsageError unless ``output`` can take an export: absent, an empty folder, or any
    folder with ``force``; never a link (dangling or not), checked before anything runs."""
    if output.is_symlink():
        raise UsageError(f"--output {output} is a link; give a folder (an export is never "
                         "written through a link)")  # fmt: skip
    if output.is_file() or (output.exists() and not output.is_dir()):
        raise UsageError(f"--output {output} is a file; give a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise UsageError(
            f"--output {output} is not empty; choose another folder, or add --force to "
            "replace it whole"
        )


@contextmanager
def staged(output: Path, force: bool) -> Iterator[Path]:
    """A new hidden folder beside ``output`` to write into; renamed to ``output`` at the
    end (replacing it whole with ``force``), removed if anything fails: an export is
    written whole or not at all."""
    check_output(output, force)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as exc:
        raise UsageError(f"cannot create {output}: {exc.strerror or exc}") from None
    try:
        yield staging
        check_output(output, force)  # nothing new appeared meanwhile
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
            os.replace(output, old / output.name)
            os.replace(staging, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    with warnings.catch_warnings():
        # "No complete tensor found in the group!": weights that share storage, on the CPU.
        warnings.simplefilter("ignore")
        torch.export.save(program, str(path))


def _save_state_dict(model: torch.nn.Module, path: Path) -> None:
    torch.save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence TorchScript's deprecation notices: the export format is TorchScript by contract."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def _save_script(module: torch.jit.ScriptModule, path: Path) -> None:
    with quiet_jit():
        torch.jit.save(module, str(path))
