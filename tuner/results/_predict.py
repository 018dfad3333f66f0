"""Predicting with an export folder: load it without running its author's code, classify
photos and folders, print or write the answers.

``predict`` reads ``model.pt`` (or the members' state_dicts) into the architecture
``config.json`` names, built by the project, with ``torch.load(weights_only=True)``:
no code from the folder runs. ``predict --trust-model`` runs ``model.ts`` instead.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainables import IMAGE_EXTENSIONS, MODELS, build_model, default_device
from tuner._errors import UsageError, printable
from tuner.results._ensemble import ProbabilityMean
from tuner.results._export import CONFIG, LABELS, MODEL_SCRIPT, MODEL_STATE, quiet_jit
from tuner.results._inference import Preprocessing, classify


@dataclass
class ExportedModel:
    """An export folder loaded for prediction (the model, labels, preprocessing)."""

    folder: Path
    model: Callable[[torch.Tensor], torch.Tensor]
    labels: list[str]
    preprocessing: Preprocessing
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # model, batches


def resolve_device(name: str) -> torch.device:
    """The device ``predict --device`` names: ``cpu``, ``cuda``, ``cuda:N``, or ``auto`` (a
    CUDA GPU when there is one, else the CPU); UsageError for a GPU this machine lacks."""
    if name == "auto":
        return default_device()
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {name}: this machine has no CUDA device that torch can use; "
            "use --device cpu (or auto)"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UsageError(
            f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return device


IMAGE_SIZES = range(32, 1025)  # what an export's config may ask for


def _not_export(folder: Path, why: str) -> UsageError:
    return UsageError(f"{folder} is not a usable export: {why}")


def _preprocessing(folder: Path, config: dict[str, Any]) -> Preprocessing:
    size = config.get("image_size")
    if not isinstance(size, int) or size not in IMAGE_SIZES:
        raise _not_export(folder, f"image_size {size!r} is not a whole number of 32-1024 px")
    numbers: dict[str, tuple[float, ...]] = {}
    for name in ("mean", "std"):
        value = config.get(name)
        if not (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        ):
            raise _not_export(folder, f"{name} {value!r} is not three finite numbers")
        numbers[name] = tuple(float(v) for v in value)
    if min(numbers["std"]) <= 0:
        raise _not_export(folder, f"std {list(numbers['std'])} must be positive")
    return Preprocessing(size, numbers["mean"], numbers["std"])


def _weights(folder: Path, rel: str, model: str, n_classes: int, size: int) -> torch.nn.Module:
    """The allow-listed architecture ``model`` with the tensors of ``folder/rel`` (data
    only: ``weights_only``)."""
    if model not in MODELS:
        raise _not_export(folder, f"model {model!r} is none of {', '.join(MODELS)}")
    path = (folder / rel).resolve()
    if folder.resolve() not in path.parents:
        raise _not_export(folder, f"{rel!r} lies outside the export folder")
    net = build_model(model, n_classes, pretrained=False, image_size=size)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise _not_export(folder, f"{rel}: {type(exc).__name__}: {exc}") from None
    return net.eval().to(memory_format=torch.channels_last)


def load_export(
    folder: Path, trust_model: bool = False, device: torch.device | None = None
) -> ExportedModel:
    """Read an export folder (UsageError if it is not a usable one), its model on ``device``
    (default: the CPU).

    By default nothing of the author's code runs: the architecture named in
    ``config.json`` (one of the project's models) is built here and given the
    tensors of ``model.pt`` (or each member's, for an ensemble), loaded with
    ``weights_only=True``; every value of ``config.json`` used is checked first.
    ``trust_model`` runs ``model.ts`` instead (TorchScript runs code its author wrote).
    """
    device = device or torch.device("cpu")
    if folder.is_file():
        raise UsageError(f"{folder} is a file; give the folder `export` wrote")
    missing = [name for name in (LABELS, CONFIG) if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        raise UsageError(
            f"{folder} is not an exported model folder (missing {', '.join(missing)}); "
            "create one with: python -m tuner export NAME --output DIR"
        )
    try:
        labels = json.loads((folder / LABELS).read_text())
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise _not_export(folder, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(c, str) for c in labels):
        raise _not_export(folder, f"{LABELS} is not a list of class names")
    if not isinstance(config, dict):
        raise _not_export(folder, f"{CONFIG} is not a JSON object")
    if config.get("num_classes") != len(labels):
        raise _not_export(
            folder, f"num_classes {config.get('num_classes')!r} != {len(labels)} labels"
        )
    prep = _preprocessing(folder, config)
    model: Callable[[torch.Tensor], torch.Tensor]
    if trust_model:
        if not (folder / MODEL_SCRIPT).is_file():
            raise _not_export(folder, f"no {MODEL_SCRIPT}")
        try:
            with quiet_jit():
                model = torch.jit.load(str(folder / MODEL_SCRIPT), map_location=device).eval()
        except (OSError, RuntimeError, ValueError) as exc:
            raise _not_export(folder, f"{MODEL_SCRIPT}: {type(exc).__name__}: {exc}") from None
    elif "ensemble" in config:
        members = (
            config["ensemble"].get("members") if isinstance(config["ensemble"], dict) else None
        )
        if not isinstance(members, list) or not members:
            raise _not_export(folder, "its ensemble lists no members")
        try:
            nets = [
                _weights(
                    folder, str(m["state_dict"]), str(m["model"]), len(labels), prep.image_size
                )
                for m in members
            ]
            weights = [float(m["weight"]) for m in members]
        except (KeyError, TypeError, ValueError) as exc:
            raise _not_export(folder, f"an ensemble member is incomplete ({exc})") from None
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise _not_export(folder, f"ensemble weights {weights} must be positive")
        model = ProbabilityMean(nets, weights).eval().to(device)
    else:
        model = _weights(
            folder, MODEL_STATE, str(config.get("model")), len(labels), prep.image_size
        ).to(device)
    return ExportedModel(folder, model, labels, prep, device)


def predict_images(
    exported: ExportedModel, images: Sequence[str], top: int
) -> list[dict[str, Any]]:
    """Top-``top`` classes with probabilities for each image, in the order given.

    Each entry is ``{"image", "predictions": [{"class", "probability"}]}``, or
    ``{"image", "error"}`` for an image that could not be read.
    """
    classified = classify(exported.model, images, exported.preprocessing, device=exported.device)
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


def expand_images(items: Sequence[str]) -> list[str]:
    """The photos named: files as given, folders replaced by the image files under them
    (recursively, sorted)."""
    photos: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            photos += sorted(
                str(p)
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and p.is_file()
                and not p.name.startswith(".")
            )
        else:
            photos.append(item)
    return photos


def write_predictions(results: Sequence[dict[str, Any]], output: Path, top: int) -> None:
    """``results`` as one row per photo: CSV (image, class_k, probability_k..., error) or
    JSON (a list of :func:`predict_images` entries); written whole."""
    if output.suffix.lower() == ".json":
        text = json.dumps(list(results), indent=2) + "\n"
    else:
        import csv
        import io

        buffer = io.StringIO()
        columns = ["image"]
        for k in range(1, top + 1):
            columns += [f"class_{k}", f"probability_{k}"]
        writer = csv.DictWriter(buffer, fieldnames=[*columns, "error"])
        writer.writeheader()
        for result in results:
            row = {"image": result["image"], "error": result.get("error", "")}
            for k, p in enumerate(result.get("predictions", []), start=1):
                row |= {f"class_{k}": p["class"], f"probability_{k}": f"{p['probability']:.6f}"}
            writer.writerow(row)
        text = buffer.getvalue()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, output)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None


def format_predictions(results: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """Human-readable predictions (stdout) and one error line per failed image (stderr)."""
    lines: list[str] = []
    errors: list[str] = []
    for result in results:
        image = printable(result["image"])
        if "error" in result:
            errors.append(f"{image}: error: {printable(result['error'])}")
            continue
        lines.append(image)
        lines += [
            f"  {p['probability']:7.2%}  {printable(p['class'])}" for p in result["predictions"]
        ]
    return "\n".join(lines), errors
