"""Reading an export folder someone else wrote, within bounds known before it is read.

An export may come from a shared folder, so each file ``predict`` reads from it
is checked before anything large is built from it:

- ``labels.json`` (at most :data:`LABELS_BYTES`) and ``config.json`` (at most
  :data:`CONFIG_BYTES`) are regular files, read whole with
  :func:`trainables.read_bounded` and parsed with :func:`trainables.parse_json`
  (nesting capped); the labels are at most :data:`MAX_LABELS` unique strings
  of at most :data:`MAX_LABEL_CHARS` characters;
- an ensemble lists at most :data:`MAX_MEMBERS` members, each state_dict file
  once (no two members name the same file, or the same file by a hard link);
- each ``model.pt`` is opened as a regular file (never a FIFO, never through a
  link) no larger than the state of the architecture ``config.json`` names (its
  tensors' bytes, known from the model built here) plus :data:`FILE_MARGIN`;
  it must be the zip ``torch.save`` writes, every entry stored uncompressed,
  their sizes adding up to no more than that state plus :data:`STATE_MARGIN`;
  only then is it unpickled (``weights_only=True``), and its tensors must have
  the architecture's names and shapes.
- ``config.json``'s ``tta`` is ``"none"`` or ``"flip"`` (absent: ``"none"``).

Memory bound: ``predict`` without ``--trust-model`` on any export holds at most
the models themselves (the architectures ``config.json`` names, with the
labels' head) plus one member's state in transit while it is loaded, plus
256 MiB for the parsed JSON (< 100 MiB at these caps) and the photos in flight
(decoded chunks of at most ~64 MiB and one batch, see
:mod:`tuner.results._inference`), on top of the interpreter with torch loaded.
``--trust-model`` runs the author's TorchScript (at most
:data:`MODEL_SCRIPT_BYTES`); its memory is the author's to bound.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from trainables import MIB, FileRefused, open_regular, parse_json, read_bounded

LABELS_BYTES = 4 * MIB  # 10,000 labels of 200 characters, indented, fit in 2.1 MiB
CONFIG_BYTES = 1 * MIB  # a 16-member ensemble's config.json takes ~10 KiB
MAX_LABELS = 10_000
MAX_LABEL_CHARS = 200
MAX_MEMBERS = 16
STATE_MARGIN = 8 * MIB  # the pickle and small records beside the tensors' bytes
FILE_MARGIN = 16 * MIB  # the above plus zip headers and torch's 64-byte alignment
MODEL_SCRIPT_BYTES = 4 << 30  # model.ts, run only with --trust-model
TTA_MODES = ("none", "flip")  # the test-time augmentations an export may ask for
_ZIP_MAGIC = b"PK\x03\x04"


def read_json(path: Path, limit: int) -> Any:
    """The JSON document of the regular file ``path`` (at most ``limit`` bytes, not through
    a link): FileRefused naming it otherwise; FileNotFoundError as is."""
    return parse_json(read_bounded(path, limit), path.name)


def check_labels(labels: Any, name: str) -> list[str]:
    """``labels`` if they are 1 to MAX_LABELS unique strings of 1 to MAX_LABEL_CHARS
    characters, else FileRefused naming ``name``."""
    if not isinstance(labels, list) or not labels:
        raise FileRefused(f"{name} is not a list of class names")
    if len(labels) > MAX_LABELS:
        raise FileRefused(f"{name} holds {len(labels)} labels, over the {MAX_LABELS} allowed")
    for label in labels:
        if not isinstance(label, str) or not 0 < len(label) <= MAX_LABEL_CHARS:
            shown = repr(label)[:60]
            raise FileRefused(
                f"{name}: label {shown} is not a name of 1 to {MAX_LABEL_CHARS} characters"
            )
    if len(set(labels)) != len(labels):
        raise FileRefused(f"{name} names a class twice")
    return labels


def check_tta(config: dict[str, Any]) -> str:
    """The test-time augmentation ``config.json`` asks for: ``"none"`` (also when the key
    is absent, as in exports written before it existed) or ``"flip"``; FileRefused for
    anything else."""
    value = config.get("tta", "none")
    if not isinstance(value, str) or value not in TTA_MODES:
        raise FileRefused(f"tta {repr(value)[:40]} is not one of {', '.join(map(repr, TTA_MODES))}")
    return value


def check_members(members: Any) -> list[dict[str, Any]]:
    """The ``ensemble.members`` of config.json if there are 1 to MAX_MEMBERS of them, each
    an object; FileRefused otherwise (before any member is built)."""
    if not isinstance(members, list) or not members:
        raise FileRefused("its ensemble lists no members")
    if len(members) > MAX_MEMBERS:
        raise FileRefused(
            f"its ensemble lists {len(members)} members, over the {MAX_MEMBERS} allowed"
        )
    if not all(isinstance(m, dict) for m in members):
        raise FileRefused("an ensemble member is not a JSON object")
    return members


def state_bytes(net: torch.nn.Module) -> int:
    """Bytes of ``net``'s state_dict tensors: what its ``model.pt`` holds."""
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


class MemberFiles:
    """Opens each state_dict file of an export once: a second member naming the same file
    (by another path or a hard link) is refused."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()

    def open(self, path: Path, rel: str, limit: int) -> int:
        """A descriptor of the regular file ``path`` (at most ``limit`` bytes, not a link)."""
        try:
            fd = open_regular(path, limit)
        except FileNotFoundError:
            raise FileRefused(f"{rel} is missing") from None
        except FileRefused as exc:
            raise FileRefused(str(exc).replace(str(path), rel, 1)) from None
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        if key in self._seen:
            os.close(fd)
            raise FileRefused(f"{rel} is the state of another member too; not loading it twice")
        self._seen.add(key)
        return fd


def _check_zip(f: Any, rel: str, expected: int, n_tensors: int) -> None:
    """FileRefused unless ``f`` is a zip whose entries are all stored (uncompressed), at
    most a few more than the tensors, adding up to at most ``expected`` + STATE_MARGIN."""
    if f.read(4) != _ZIP_MAGIC:
        raise FileRefused(f"{rel} is not a torch.save file (no zip header)")
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise FileRefused(f"{rel} is not a readable zip ({exc})") from None
    if len(entries) > n_tensors + 16:
        raise FileRefused(f"{rel} holds {len(entries)} records for {n_tensors} tensors")
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
            raise FileRefused(
                f"{rel}: record {entry.filename[:80]!r} is compressed; torch.save stores "
                "records uncompressed, so its size is not known before decompressing"
            )
    total = sum(entry.file_size for entry in entries)
    if total > expected + STATE_MARGIN:
        raise FileRefused(
            f"{rel} holds {total / MIB:.1f} MiB, over the {expected / MIB:.1f} MiB state of "
            "its architecture"
        )


def _check_tensors(state: Any, net: torch.nn.Module, rel: str) -> dict[str, torch.Tensor]:
    expected = net.state_dict()
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise FileRefused(f"{rel} is not a state_dict (a dict of named tensors)")
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        shown = ", ".join([*(f"no {k!r}" for k in missing[:3]), *(repr(k) for k in extra[:3])])
        raise FileRefused(
            f"{rel} does not fit the architecture: {len(missing)} tensor(s) missing, "
            f"{len(extra)} unexpected ({shown[:200]})"
        )
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise FileRefused(
                f"{rel}: {key[:80]!r} is {shape}, the architecture expects {tuple(want.shape)}"
            )
    return state


def load_weights(net: torch.nn.Module, path: Path, rel: str, files: MemberFiles) -> None:
    """Give ``net`` the tensors of the state_dict file ``path`` (``rel`` in messages) after
    the checks of the module doc; FileRefused (one line) for any file that fails them."""
    expected = state_bytes(net)
    n_tensors = len(net.state_dict())
    fd = files.open(path, rel, expected + FILE_MARGIN)
    with os.fdopen(fd, "rb") as f:
        _check_zip(f, rel, expected, n_tensors)
        f.seek(0)
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # an unpickler refusal, a corrupt record: data, not a bug
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise FileRefused(
                f"{rel} is not a plain state_dict torch loads safely "
                f"({type(exc).__name__}: {first})"
            ) from None
    try:
        net.load_state_dict(_check_tensors(state, net, rel))
    except (RuntimeError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise FileRefused(f"{rel}: {type(exc).__name__}: {first}") from None


def open_script(path: Path) -> int:
    """A descriptor of ``model.ts`` (a regular file, not a link, at most
    MODEL_SCRIPT_BYTES): for ``--trust-model``."""
    try:
        return open_regular(path, MODEL_SCRIPT_BYTES)
    except FileNotFoundError:
        raise FileRefused(f"no {path.name}") from None
