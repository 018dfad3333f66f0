"""One experiment's folder (``STORAGE/NAME/``): every file name in it is defined here.

An :class:`Experiment` is a :class:`~tuner.storage._storage.Storage` and a checked
name. Every reader and writer of the folder (the search, ``resume``,
``leaderboard``, ``report``, ``evaluate``, ``export``, ``refit``, tests and
benchmarks) goes through it, so a local folder and an object-store URI are
the same to all of them. It does not import Ray: Ray Tune's own files (the trial
list named in :mod:`tuner.engine.formats`, ``trial_*/``) are only found, and each trial's
``result.json`` read, here.

>>> import tempfile
>>> exp = Experiment(Storage.parse(tempfile.mkdtemp()), "flowers-1")
>>> exp.exists(), exp.display("split.json").endswith("/flowers-1/split.json")
(False, True)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from trainables import MIB, SPLIT_FILE, FileRefused, Split, parse_json, safe_name
from tuner._errors import UsageError
from tuner.engine.formats import STATE_GLOB
from tuner.storage._storage import Storage

if TYPE_CHECKING:
    from tuner.spaces import SearchSpace

TUNER_FILE = "tuner.json"
JOURNAL_FILE = "optuna_journal.log"
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_PARQUET = "leaderboard.parquet"
BEST_CONFIG = "best_config.json"
SUMMARY_FILE = "summary.json"  # what `list` shows, written with the leaderboard
TEST_SCORES = "test_scores.json"
ENSEMBLES = "ensembles.json"
REFIT_DIR = "refit"
DISTILL_DIR = "distilled"
REPORT_DIR = "report"
RESULT_FILE = "result.json"
TRIAL_PREFIX = "trial_"
# Kept by the tool beside Ray's files:
LOCK_FILE = ".writer.json"  # who writes the experiment now (search, resume)
GUARD_FILE = ".writer.guard"  # flock'd on a local folder while the lock is taken
SIGNATURES_FILE = ".state-signatures"  # HMACs of the state resume loads
RESERVE_FILE = ".tuner-reserve"  # disk kept free for the last save of a full storage
REFIT_RECORD = "refit.json"  # in REFIT_DIR
DISTILL_RECORD = "distill.json"  # in DISTILL_DIR/NAME
REPORT_FILE = "report.md"  # in REPORT_DIR
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The most of a file that is read: the tool's own JSON files are far smaller; a trial's
# results grow by one line an epoch (~1 KiB).
JSON_LIMIT = 16 * MIB
RESULTS_LIMIT = 64 * MIB
STATE_LIMIT = (
    64 * MIB
)  # the most of a state file read: Ray's trial list (~2 KiB a trial), tuner.pkl (a few MB)
_RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "space_name": str,
    "space_source": str,
    "space": dict,
    "data_dir": str,
    "storage": str,
    "resize": int,
    "resources": dict,
}
# What each field of a trial's result line must be when present (Ray's own fields and
# the trainable's); a line whose field is of another type is refused.
_REPORT_TYPES: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "training_iteration": int,
    "val_acc": (int, float),
    "val_loss": (int, float),
    "train_loss": (int, float),
    "time_total_s": (int, float),
    "time_this_iter_s": (int, float),
    "diverged": bool,
    "checkpoint_dir_name": (str, type(None)),
    "latency_ms": (int, float),
    "params_m": (int, float),
}


def _checked_report(report: Any, line: int, where: str) -> dict[str, Any]:
    """One line of a trial's ``result.json``, its fields' types checked."""
    if not isinstance(report, dict):
        raise FileRefused(f"line {line} of {where} is not a JSON object")
    for key, kind in _REPORT_TYPES.items():
        value = report.get(key)
        if value is None and key != "checkpoint_dir_name":
            continue
        if key in report and (
            not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
        ):
            raise FileRefused(
                f"line {line} of {where}: {key} is {type(value).__name__}, not a result "
                "Ray Tune wrote"
            )
    return report


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise UsageError(
            f"invalid experiment name {name!r}: use letters, digits, '.', '_' and '-' "
            "(no path separators, no '..')"
        )
    return name


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """``tuner.json``: the resolved run, enough to reproduce or resume it."""

    name: str
    space_name: str
    space_source: str
    space: dict[str, Any]  # the resolved space: description, params, budget, points
    data_dir: str
    storage: str
    address: str | None
    resize: int  # side of the decoded squares (trainables.resize_for of the largest image_size)
    resources: dict[str, float]
    command: str = ""
    ray_version: str = ""
    follow_links: bool = False
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    # Earlier experiments whose trials seeded the study: experiment, storage, taken,
    # ignored, reasons (``search --warm-start``).
    warm_start: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any, where: str = TUNER_FILE) -> RunRecord:
        """The record in ``data`` (``tuner.json`` parsed); FileRefused naming ``where`` if
        a field is missing or of the wrong type."""
        try:
            if not isinstance(data, dict):
                raise TypeError("not an object")
            if "resize" not in data and "cache_size" in data:  # its earlier name
                data = {**data, "resize": data["cache_size"]}
            known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            missing = [k for k in _RECORD_TYPES if k not in known]
            if missing:
                raise KeyError(", ".join(missing))
            for key, kind in _RECORD_TYPES.items():
                if not isinstance(known[key], kind) or isinstance(known[key], bool):
                    raise TypeError(f"{key} is {type(known[key]).__name__}")
            resources = known["resources"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in resources.values()):  # fmt: skip
                raise TypeError("resources are not numbers")
            known["resources"] = {str(k): float(v) for k, v in resources.items()}
            known["resize"] = int(known["resize"])
            warm = known.get("warm_start", [])
            if not isinstance(warm, list) or not all(
                isinstance(w, dict) and isinstance(w.get("experiment"), str) for w in warm
            ):
                raise TypeError("warm_start is not a list of sources")
            for key in ("address", "command", "ray_version", "created"):
                if key in known and known[key] is not None and not isinstance(known[key], str):
                    raise TypeError(f"{key} is {type(known[key]).__name__}")
            return cls(**known)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise FileRefused(f"{where} is not a record this tool wrote ({exc})") from None

    def encode(self) -> bytes:
        """The bytes of ``tuner.json``, which the search writes signed
        (:func:`tuner.storage._signing.write_signed`)."""
        return json.dumps(asdict(self), indent=2).encode()

    def search_space(self) -> SearchSpace:
        # Imported here: spaces import Ray, which `leaderboard`, `list` and `export`
        # never need.
        from tuner.spaces import parse_space

        return parse_space(self.space, name=self.space_name, source=self.space_source)


class Experiment:
    """The folder of experiment ``name`` in ``storage`` (which need not exist yet)."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage = storage
        self.name = validate_name(name)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> Experiment:
        """The experiment whose local folder is ``folder`` (``STORAGE/NAME``)."""
        path = Path(folder).expanduser().resolve()
        return cls(Storage.parse(str(path.parent)), path.name)

    @classmethod
    def open(cls, storage: Storage, name: str) -> Experiment:
        """An experiment Ray Tune has saved state for; UsageError naming the others if none."""
        exp = cls(storage, name)
        if not exp.has_state():
            known = experiment_names(storage)
            raise UsageError(
                f"no experiment {name!r} in {storage.display()}; experiments there: "
                f"{', '.join(known) if known else '(none)'}"
            )
        return exp

    def rel(self, *parts: str) -> str:
        """``parts`` relative to the storage root."""
        return "/".join((self.name, *parts))

    def path(self, *parts: str) -> str:
        """The file system path of ``parts`` (what Ray's ``storage_filesystem`` takes)."""
        return self.storage.path(self.rel(*parts))

    def display(self, *parts: str) -> str:
        """How a user names ``parts``: a local path or a URI."""
        return self.storage.display(self.rel(*parts))

    def resume_command(self) -> str:
        return f"python -m tuner resume {self.name} --storage {shlex.quote(self.storage.uri)}"

    # What is there -----------------------------------------------------------

    def has_state(self) -> bool:
        """Whether Ray Tune saved the experiment's state (a trial may have run)."""
        return bool(self.storage.list(self.name, STATE_GLOB, dirs=False))

    def has_record(self) -> bool:
        return self.storage.exists(self.rel(TUNER_FILE))

    def exists(self) -> bool:
        return self.has_record() or self.has_state()

    # Files --------------------------------------------------------------------

    def read_json(self, file: str, default: Any = None, limit: int = JSON_LIMIT) -> Any:
        """The JSON file ``file`` (``default`` if absent). FileRefused (exit 2, one line
        naming it) if it is not a regular file of at most ``limit`` bytes holding JSON
        nested at most :data:`~trainables.JSON_DEPTH` levels."""
        try:
            data = self.storage.read_bytes(self.rel(file), limit)
        except FileNotFoundError:
            return default
        return parse_json(data, self.display(file), nan=True)  # Python writes NaN as NaN

    def write_json(self, file: str, data: Any) -> None:
        self.storage.write_text(self.rel(file), json.dumps(data, indent=2))

    def write_bytes(self, file: str, data: bytes) -> None:
        self.storage.write_bytes(self.rel(file), data)

    def delete(self, *parts: str) -> None:
        self.storage.delete(self.rel(*parts))

    def _required(self, file: str) -> dict[str, Any]:
        data = self.read_json(file)
        if not isinstance(data, dict):
            raise UsageError(f"{self.display(file)} is missing or unreadable")
        return data

    def record(self) -> RunRecord:
        return RunRecord.from_json(self._required(TUNER_FILE), self.display(TUNER_FILE))

    def record_if_written(self) -> RunRecord | None:
        """The record, or None before the search wrote it (one read, no existence check)."""
        data = self.read_json(TUNER_FILE)
        return None if data is None else RunRecord.from_json(data, self.display(TUNER_FILE))

    def split(self) -> Split:
        return Split.from_json(self._required(SPLIT_FILE))

    def write_split(self, split: Split) -> None:
        self.write_json(SPLIT_FILE, split.to_json())

    # Trials -------------------------------------------------------------------

    def trial_ids(self) -> list[str]:
        folders = self.storage.list(self.name, f"{TRIAL_PREFIX}*", dirs=True)
        ids = [f.removeprefix(TRIAL_PREFIX) for f in folders]
        return [i for i in ids if NAME_RE.fullmatch(i) and ".." not in i]

    def reports(self, trial_id: str) -> list[dict[str, Any]]:
        """Every result ``trial_id`` reported, in order, repeats included (Ray Tune's
        ``result.json``, one JSON object per line)."""
        rel = self.rel(f"{TRIAL_PREFIX}{safe_name(trial_id, 'trial id')}", RESULT_FILE)
        try:
            data = self.storage.read_bytes(rel, RESULTS_LIMIT)
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        reports = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                report = parse_json(line, f"line {i + 1} of {self.storage.display(rel)}", nan=True)
            except FileRefused:
                if not any(rest.strip() for rest in lines[i + 1 :]):
                    break  # the last line of a trial still writing it
                raise
            reports.append(_checked_report(report, i + 1, self.storage.display(rel)))
        return reports

    def history(self, trial_id: str) -> pd.DataFrame:
        """Every epoch ``trial_id`` reported, once each, in order (an epoch re-run after a
        restore from an older checkpoint counts once: its last report)."""
        df = pd.DataFrame(self.reports(trial_id))
        if "epoch" not in df:
            return df
        return (
            df.drop_duplicates(subset="epoch", keep="last")
            .sort_values("epoch")
            .reset_index(drop=True)
        )

    def histories(self) -> dict[str, pd.DataFrame]:
        """trial id -> :meth:`history`, for every trial folder."""
        return {trial_id: self.history(trial_id) for trial_id in self.trial_ids()}


def experiment_names(storage: Storage) -> list[str]:
    """The experiments Ray Tune saved state for under ``storage``."""
    names = []
    for name in storage.list(dirs=True):
        if NAME_RE.match(name) and Experiment(storage, name).has_state():
            names.append(name)
    return names
