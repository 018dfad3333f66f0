"""Predicting with an export folder: load it without running its author's code, classify
photos and folders, print or write the answers.

``predict`` reads ``model.pt`` (or the members' state_dicts) into the architecture
``config.json`` names, built by the project, with ``torch.load(weights_only=True)``:
no code from the folder runs. ``predict --trust-model`` runs ``model.ts`` instead.
Every file of the folder is read within the bounds stated in
:mod:`tuner.results._bounds` (memory: the models themselves plus one member's state in
transit plus 256 MiB, on top of the interpreter with torch loaded), and each photo
through :func:`trainables.decode_one` (a regular file of at most 256 MiB).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainables import (
    IMAGE_EXTENSIONS,
    MODELS,
    FileRefused,
    build_model,
    default_device,
    write_replacing,
)
from tuner._errors import UsageError, printable
from tuner.results._bounds import (
    CONFIG_BYTES,
    LABELS_BYTES,
    MemberFiles,
    check_labels,
    check_members,
    check_tta,
    load_weights,
    open_script,
    read_json,
)
from tuner.results._ensemble import ProbabilityMean
from tuner.results._export import CONFIG, LABELS, MODEL_SCRIPT, MODEL_STATE, quiet_jit
from tuner.results._inference import Preprocessing, classify
from tuner.results._tta import apply_tta


@dataclass(kw_only=True)
class ExportedModel:
    """An export folder loaded for prediction (the model, labels, preprocessing)."""

    folder: Path
    model: Callable[[torch.Tensor], torch.Tensor]
    labels: list[str]
    preprocessing: Preprocessing
    tta: str = "none"  # config.json's test-time augmentation, applied by ``model``
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


def _weights(
    folder: Path, rel: object, model: object, n_classes: int, size: int, files: MemberFiles
) -> torch.nn.Module:
    """The allow-listed architecture ``model`` with the tensors of ``folder/rel`` (data
    only: ``weights_only``), checked against it before they are unpickled (see
    :mod:`tuner.results._bounds`)."""
    if not isinstance(model, str) or model not in MODELS:
        raise _not_export(folder, f"model {printable(model)[:80]!r} is none of {', '.join(MODELS)}")
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        raise _not_export(folder, f"state_dict {printable(rel)[:80]!r} is not a path in it")
    path = (folder / rel).resolve()
    if folder.resolve() not in path.parents:
        raise _not_export(folder, f"{printable(rel)[:80]!r} lies outside the export folder")
    net = build_model(model, n_classes, pretrained=False, image_size=size)
    try:
        load_weights(net, folder / rel, rel, files)
    except FileRefused as exc:
        raise _not_export(folder, str(exc)) from None
    return net.eval().to(memory_format=torch.channels_last)


def _member_weight(member: dict[str, Any]) -> float:
    weight = member.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise FileRefused(f"an ensemble member's weight {printable(weight)[:40]} is not a number")
    if not (math.isfinite(weight) and weight > 0):
        raise FileRefused(f"ensemble weights must be positive, not {weight}")
    return float(weight)


def _read_export(folder: Path) -> tuple[list[str], dict[str, Any]]:
    """labels.json and config.json of ``folder``, each read within its cap and checked."""
    if folder.is_file():
        raise UsageError(f"{folder} is a file; give the folder `export` wrote")
    missing = [name for name in (LABELS, CONFIG) if not os.path.lexists(folder / name)]
    if not folder.is_dir() or missing:
        raise UsageError(
            f"{folder} is not an exported model folder (missing {', '.join(missing)}); "
            "create one with: python -m tuner export NAME --output DIR"
        )
    try:
        labels = check_labels(read_json(folder / LABELS, LABELS_BYTES), LABELS)
        config = read_json(folder / CONFIG, CONFIG_BYTES)
    except FileRefused as exc:
        raise _not_export(folder, str(exc)) from None
    except OSError as exc:
        raise _not_export(folder, f"{type(exc).__name__}: {exc.strerror or exc}") from None
    if not isinstance(config, dict):
        raise _not_export(folder, f"{CONFIG} is not a JSON object")
    if config.get("num_classes") != len(labels):
        shown = printable(config.get("num_classes"))[:40]
        raise _not_export(folder, f"num_classes {shown} != {len(labels)} labels")
    return labels, config


def load_export(
    folder: Path, trust_model: bool = False, device: torch.device | None = None
) -> ExportedModel:
    """Read an export folder (UsageError if it is not a usable one), its model on ``device``
    (default: the CPU).

    By default nothing of the author's code runs: the architecture named in
    ``config.json`` (one of the project's models) is built here and given the
    tensors of ``model.pt`` (or each member's, for an ensemble), loaded with
    ``weights_only=True``; every value of ``config.json`` used is checked first,
    and every file is read within the bounds of :mod:`tuner.results._bounds`.
    ``trust_model`` runs ``model.ts`` instead (TorchScript runs code its author wrote).
    With ``"tta": "flip"`` in config.json, the model built here averages the
    probabilities of each photo and its mirror (``model.ts`` holds that already).
    """
    device = device or torch.device("cpu")
    labels, config = _read_export(folder)
    prep = _preprocessing(folder, config)
    try:
        tta = check_tta(config)
    except FileRefused as exc:
        raise _not_export(folder, str(exc)) from None
    files = MemberFiles()
    model: Callable[[torch.Tensor], torch.Tensor]
    if trust_model:
        model = _script(folder, device)
    elif "ensemble" in config:
        section = config["ensemble"]
        try:
            members = check_members(section.get("members") if isinstance(section, dict) else None)
            weights = [_member_weight(m) for m in members]
        except FileRefused as exc:
            raise _not_export(folder, str(exc)) from None
        nets = [
            _weights(
                folder, m.get("state_dict"), m.get("model"), len(labels), prep.image_size, files
            )
            for m in members
        ]
        model = apply_tta(ProbabilityMean(nets, weights).eval(), tta).to(device)
    else:
        net = _weights(
            folder, MODEL_STATE, config.get("model"), len(labels), prep.image_size, files
        )
        model = apply_tta(net, tta).to(device)
    return ExportedModel(
        folder=folder, model=model, labels=labels, preprocessing=prep, tta=tta, device=device
    )


def _script(folder: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.ts`` of ``folder`` (``--trust-model``: its author's code runs)."""
    try:
        fd = open_script(folder / MODEL_SCRIPT)
    except FileRefused as exc:
        raise _not_export(folder, str(exc)) from None
    with os.fdopen(fd, "rb") as f:
        try:
            with quiet_jit():
                module: torch.jit.ScriptModule = torch.jit.load(f, map_location=device)
        except (OSError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise _not_export(folder, f"{MODEL_SCRIPT}: {type(exc).__name__}: {first}") from None
    return module.eval()


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


def predictions_json(model_dir: str, results: Sequence[dict[str, Any]]) -> str:
    """What ``predict --json`` prints and ``--output F.json`` writes: one object,
    ``model_dir`` and ``results`` (the :func:`predict_images` entries)."""
    return json.dumps({"model_dir": model_dir, "results": list(results)}, indent=2) + "\n"


def write_predictions(
    results: Sequence[dict[str, Any]], output: Path, top: int, model_dir: str
) -> None:
    """``results`` as one row per photo: CSV (image, class_k, probability_k..., error) or
    JSON (:func:`predictions_json`); written whole."""
    if output.suffix.lower() == ".json":
        text = predictions_json(model_dir, results)
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
        write_replacing(output, text.encode("utf-8"))
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
