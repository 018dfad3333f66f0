"""The user's state key and the signed record of an experiment (``.state-signatures``):
the experiment's random id and name, its save counter, the last digests of each signed file
and the journal's length at each saved trial list, under a MAC of the key. How they are
used: :mod:`tuner.storage._signing`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables import KIB, FileRefused, parse_json, read_bounded, settings, write_replacing
from tuner._errors import UsageError
from tuner.storage._experiment import SIGNATURES_FILE

VERSION = 2  # of the record; version 1 (digests not bound to an experiment) verifies nothing
_DIGEST = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{32}")
_KEYS: dict[str, bytes] = {}


# The key: its path comes from the settings; its bytes are read here only ----------


def key_path() -> Path:
    """``$XDG_CONFIG_HOME/flower-tune/state.key``, else ``~/.config/flower-tune/state.key``."""
    return settings().config_dir / "state.key"


def load_key(path: str | None = None) -> bytes:
    """The key at ``path`` (default :func:`key_path`), created 0600 if there is none."""
    path = path or str(key_path())
    if path not in _KEYS:
        _KEYS[path] = _read_or_create(Path(path))
    return _KEYS[path]


def _read_or_create(path: Path) -> bytes:
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state.key.", dir=path.parent)  # mode 0600
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(32))
                # Whole or not at all; a process that created it first wins.
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        key = read_bounded(path, KIB)
    except (OSError, FileRefused) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(
            f"cannot read or create the state key {path}: {reason} "
            "(set XDG_CONFIG_HOME to a folder you can write)"
        ) from None
    if len(key) < 32:
        raise UsageError(f"the state key {path} is damaged (under 32 bytes)")
    return key


# The signed record -------------------------------------------------------------


@dataclass
class Record:
    """``.state-signatures``: the experiment's id and name, its save counter, the last
    digests of each signed file and the journal's length at each saved trial list."""

    experiment: str
    name: str
    save: int = 0
    files: dict[str, list[str]] = field(default_factory=dict)
    journal: dict[str, int] = field(default_factory=dict)  # state digest -> bytes

    def digest(self, key: bytes, file: str, data: bytes) -> str:
        message = b"\0".join((self.experiment.encode(), file.encode(), data))
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def valid(self, key: bytes, file: str, data: bytes) -> bool:
        digest = self.digest(key, file, data)
        return any(hmac.compare_digest(digest, known) for known in self.files.get(file, []))

    def body(self) -> dict[str, Any]:
        return {"version": VERSION, "experiment": self.experiment, "name": self.name,
                "save": self.save, "files": self.files, "journal": self.journal}  # fmt: skip

    def encode(self, key: bytes) -> bytes:
        body = self.body()
        return json.dumps({**body, "mac": _mac(key, body)}, indent=1).encode()


def _mac(key: bytes, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, b"state-signatures\0" + canonical, hashlib.sha256).hexdigest()


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_record(raw: bytes | None, key: bytes, name: str) -> Record | None:
    """The record in ``raw`` if ``key`` signed it for the experiment ``name``; None if it
    is absent, malformed, of another experiment or version, or its MAC does not match."""
    if raw is None:
        return None
    try:
        doc = parse_json(raw, SIGNATURES_FILE)
    except FileRefused:
        return None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or doc.get("name") != name:
        return None
    files: Any = doc.get("files")
    journal, ident = doc.get("journal"), doc.get("experiment")
    digests = files.values() if isinstance(files, dict) else [None]
    if not (isinstance(ident, str) and _ID.fullmatch(ident) and _is_count(doc.get("save"))
            and all(isinstance(v, list) and all(isinstance(d, str) and _DIGEST.fullmatch(d)
                                                for d in v) for v in digests)
            and isinstance(journal, dict) and all(map(_is_count, journal.values()))):  # fmt: skip
        return None
    record = Record(ident, name, doc["save"], files, journal)
    mac = doc.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(_mac(key, record.body()), mac):
        return None
    return record


# The highest save counter this machine wrote or checked, per experiment folder ---------


def mark_of(ident: str, where: str) -> str:
    """The name of the save mark of experiment ``ident`` in the folder ``where`` (its file
    system and path): a rollback is a folder's state going back, and a copy of the folder
    elsewhere (same id) is watched on its own."""
    return hashlib.sha256(f"{ident}\0{where}".encode()).hexdigest()[:32]


def _mark(key_file: str, ident: str) -> Path:
    return Path(key_file).parent / "saves" / ident


def high_water(key_file: str, ident: str) -> int:
    """The highest save of experiment ``ident`` this machine wrote or checked (0: none)."""
    try:
        value = parse_json(read_bounded(_mark(key_file, ident), KIB), "a save mark")
    except (OSError, FileRefused):
        return 0
    return value if _is_count(value) else 0


def raise_high_water(key_file: str, ident: str, save: int) -> None:
    if save <= high_water(key_file, ident):
        return
    path = _mark(key_file, ident)
    # Losing a mark (a read-only config folder) only loses the rollback check.
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_replacing(path, str(save).encode(), 0o600)
