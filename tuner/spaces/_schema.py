"""The JSON Schema of a space file (``tuner spaces --schema``), for editors that check YAML
against one (a ``# yaml-language-server: $schema=...`` line, or the editor's settings).

It is built from what :func:`~tuner.spaces.parse_space` accepts: the sections, the trial
keys with their types and choices, the four distributions, the budget's keys, and the
scheduler, searcher and objective names. The schema catches a misspelt key or a wrong
type while typing; the ranges and the rules between keys stay ``parse_space``'s, whose
message names the key (``tuner spaces FILE`` checks a file).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from trainables import MODELS, OPTIMIZERS, PRECISIONS, SCHEDULES, TrialConfig
from tuner.spaces._objectives import LATENCY_DEVICES, OBJECTIVES
from tuner.spaces._spaces import Budget
from tuner.spaces._strategy import SCHEDULERS, SEARCHERS

_CHOICES = {"model": MODELS, "optimizer": OPTIMIZERS, "precision": PRECISIONS,
            "schedule": SCHEDULES}  # fmt: skip
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _value(key: str, kind: type) -> dict[str, Any]:
    """The schema of one value of trial key ``key``."""
    if key in _CHOICES:
        return {"enum": list(_CHOICES[key])}
    if kind is float:  # YAML and Optuna may write a float key as a whole number
        return {"type": "number"}
    return {"type": _JSON_TYPES[kind]}


def _distribution(key: str, kind: type) -> dict[str, Any]:
    """``{loguniform: [LOW, HIGH]}``, ``{uniform: ...}``, ``{randint: ...}`` (numeric keys),
    ``{choice: [...]}``."""
    pair = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    ints = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}
    forms = {"choice": {"type": "array", "items": _value(key, kind), "minItems": 1}}
    if kind in (int, float):
        forms |= {"loguniform": pair, "uniform": pair, "randint": ints}
    return {
        "type": "object",
        "description": f"{key} searched: one of {', '.join(forms)}",
        "minProperties": 1,
        "maxProperties": 1,
        "properties": forms,
        "additionalProperties": False,
    }


def _named(known: dict[str, dict[str, Any]], what: str) -> dict[str, Any]:
    """A name, or ``{NAME: {SETTING: VALUE, ...}}`` with that name's settings."""
    with_settings = {
        name: {"type": "object", "propertyNames": {"enum": sorted(settings)}}
        for name, settings in known.items()
    }
    return {
        "description": f"the {what}: a name, or {{NAME: {{settings}}}}",
        "anyOf": [
            {"enum": list(known)},
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "properties": with_settings,
                "additionalProperties": False,
            },
        ],
    }


def _budget() -> dict[str, Any]:
    properties = {}
    hints = typing.get_type_hints(Budget)
    for field in dataclasses.fields(Budget):
        kinds = typing.get_args(hints[field.name]) or (hints[field.name],)
        types = sorted(
            {"null" if k is type(None) else _value(field.name, k)["type"] for k in kinds}
        )
        properties[field.name] = {"type": types[0] if len(types) == 1 else types}
    return {"type": "object", "properties": properties, "additionalProperties": False}


def space_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a space file."""
    hints = typing.get_type_hints(TrialConfig)
    params = {}
    for key in TrialConfig.field_names():
        if key in ("max_epochs", "seed"):  # the budget's
            continue
        hint = hints[key]
        kind = str if typing.get_origin(hint) is typing.Literal else hint
        params[key] = {"anyOf": [_value(key, kind), _distribution(key, kind)]}
    objective = {"anyOf": [
        {"enum": list(OBJECTIVES)},
        {"type": "object", "minProperties": 1, "maxProperties": 1,
         "propertyNames": {"enum": list(OBJECTIVES)},
         "additionalProperties": {"enum": ["max", "min"]}},
    ]}  # fmt: skip
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "flower-tune search space",
        "type": "object",
        "required": ["params"],
        "additionalProperties": False,
        "properties": {
            "description": {"type": "string"},
            "params": {
                "type": "object",
                "description": "trial keys: a fixed value, or a distribution to search",
                "properties": params,
                "additionalProperties": False,
            },
            "budget": _budget(),
            "points_to_evaluate": {
                "type": "array",
                "description": "configurations tried first: a value for every searched key",
                "items": {"type": "object"},
            },
            "scheduler": _named(SCHEDULERS, "scheduler"),
            "searcher": _named(SEARCHERS, "searcher"),
            "objectives": {"type": "array", "items": objective, "minItems": 1},
            "latency_device": {"enum": list(LATENCY_DEVICES)},
        },
    }
