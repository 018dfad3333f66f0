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


def describe(usable: FolderScan) -> list[str]:
    """Human-readable lines: counts per class, skipped files, ambiguous labels."""
    counts = usable.counts()
    root = printable(usable.root)
    lines = [f"{root}: {len(usable.files)} usable photos in {len(counts)} classes"]
    lines += [f"  {printable(name)}: {n}" for name, n in counts.items()]
    if usable.skipped:
        lines.append(f"Skipped {len(usable.skipped)} file(s):")
        lines += [f"  {printable(s.path)}: {printable(s.reason)}" for s in usable.skipped]
    if usable.ambiguous:
        lines.append(
            f"Warning: {len(usable.ambiguous)} photo(s) are filed under more than one class "
            "(ambiguous label; both copies are kept):"
        )
        lines += ["  " + " = ".join(printable(p) for p in group) for group in usable.ambiguous]
    return lines
