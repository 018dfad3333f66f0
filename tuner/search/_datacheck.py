"""What a search would use from a photo folder, what it would skip, and why.

Shared by ``tuner data check DIR`` and the start of ``tuner search``, so both
say the same thing about the same folder.
"""

from __future__ import annotations

from typing import Any

from trainables import FolderScan
from tuner._errors import printable


def summary(usable: FolderScan) -> dict[str, Any]:
    """Machine-readable view of a screened folder (see :func:`trainables.screen`)."""
    return {
        "root": str(usable.root),
        "classes": usable.counts(),
        "usable": len(usable.files),
        "skipped": [{"path": s.path, "reason": s.reason} for s in usable.skipped],
        "ambiguous": usable.ambiguous,
        "problem": usable.problem(),
    }


def describe(usable: FolderScan, most: int | None = None) -> list[str]:
    """Human-readable lines: counts per class, skipped files, ambiguous labels. With
    ``most``, the classes share one line and at most ``most`` skipped files and ambiguous
    groups are named (a search's start; ``data check`` names every one)."""
    counts = usable.counts()
    root = printable(usable.root)
    head = f"{root}: {len(usable.files)} usable photos in {len(counts)} classes"
    per_class = [f"{printable(name)}: {n}" for name, n in counts.items()]
    lines = [f"{head} ({', '.join(per_class)})"] if most is not None else [head]
    lines += [] if most is not None else [f"  {c}" for c in per_class]
    if usable.skipped:
        lines.append(f"Skipped {len(usable.skipped)} file(s):")
        shown = usable.skipped if most is None else usable.skipped[:most]
        lines += [f"  {printable(s.path)}: {printable(s.reason)}" for s in shown]
        lines += _more(len(usable.skipped) - len(shown), root)
    if usable.ambiguous:
        lines.append(
            f"Warning: {len(usable.ambiguous)} photo(s) are filed under more than one class "
            "(ambiguous label; both copies are kept):"
        )
        groups = usable.ambiguous if most is None else usable.ambiguous[:most]
        lines += ["  " + " = ".join(printable(p) for p in group) for group in groups]
        lines += _more(len(usable.ambiguous) - len(groups), root)
    return lines


def _more(left: int, root: str) -> list[str]:
    return [f"  ... and {left} more (tuner data check {root} lists every one)"] if left else []
