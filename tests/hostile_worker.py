"""Runs hostile cases of ``tests/test_hostile.py`` in one process: for each, one file of a
real experiment or export is mutated, one command is run on it in this process (as
``python -m tuner`` would), and the file is put back.

``python tests/hostile_worker.py CASES.json RESULTS.json``: CASES is a list of
``{"path", "mutation", "argv"}``; RESULTS gets, for each, the exit code, stderr, whether a
traceback escaped, the seconds it took and this process's peak RSS while it ran.

``refit`` and ``resume`` stop where they would start Ray (``ray.init``): what comes
before it (every file they read) is what an attacker controls.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import shutil
import signal
import sys
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

CASE_TIMEOUT_S = 60
SPARSE_BYTES = 2**30
BOMB_BYTES = 512 * 2**20


class ReachedRay(Exception):
    """The command got as far as starting Ray: every file it reads before was read."""


class TimedOut(Exception):
    pass


def _swap_types(value: Any, depth: int = 0) -> Any:
    """``value`` with every leaf of another JSON type (strings become numbers, numbers
    strings, lists objects...), three levels deep."""
    if depth > 3:
        return value
    if isinstance(value, dict):
        return {k: _swap_types(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return {"0": value[:1]} if depth else [_swap_types(v, depth + 1) for v in value]
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return [value]
    return {"x": 1}


def _traverse(value: Any, depth: int = 0) -> Any:
    """``value`` with every string a path that climbs out of its folder (strings inside
    JSON strings too, as in Ray's experiment state)."""
    if isinstance(value, dict):
        return {k: _traverse(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_traverse(v, depth + 1) for v in value]
    if isinstance(value, str):
        if value.startswith("{"):
            with contextlib.suppress(ValueError):
                return json.dumps(_traverse(json.loads(value), depth + 1))
        return "x/../../../../escaped/P"
    return value


def _bomb() -> bytes:
    """A ``.pt``-shaped zip whose one entry inflates to :data:`BOMB_BYTES` of zeros."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data/0", "w", force_zip64=True) as entry:
            chunk = bytes(2**20)
            for _ in range(BOMB_BYTES // len(chunk)):
                entry.write(chunk)
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return buffer.getvalue()


def mutate(path: Path, mutation: str, original: bytes, outside: Path) -> None:
    """Put the ``mutation`` of ``original`` at ``path`` (``none``: leave it as it is)."""
    if mutation == "none":
        return
    if path.is_symlink() or path.exists():
        path.unlink()
    if mutation == "fifo":
        os.mkfifo(path)
    elif mutation == "dev_zero":
        path.symlink_to("/dev/zero")
    elif mutation == "link_out":
        path.symlink_to(outside / "sentinel")
    elif mutation == "sparse":
        with open(path, "wb") as f:
            f.truncate(SPARSE_BYTES)
    elif mutation == "bomb":
        path.write_bytes(BOMB)
    else:
        path.write_bytes(_mutated_bytes(mutation, original))


def _mutated_bytes(mutation: str, original: bytes) -> bytes:
    if mutation == "truncate":
        return original[: len(original) // 2]
    if mutation == "empty":
        return b""
    if mutation == "deep":
        return b"[" * 100_000 + b"]" * 100_000
    if mutation == "huge":
        return re.sub(rb"(?<![\w.])\d+(\.\d+)?(?![\w.])", b"1" + b"0" * 400, original)
    try:
        lines = [json.loads(line) for line in original.splitlines() if line.strip()]
        whole = json.loads(original) if len(lines) != 1 else lines[0]
    except ValueError:
        return original[::-1]  # not JSON: its bytes reversed
    change = _swap_types if mutation == "types" else _traverse
    if len(lines) > 1 and not original.lstrip().startswith((b"{\n", b"[")):
        return b"\n".join(json.dumps(change(line)).encode() for line in lines) + b"\n"
    return json.dumps(change(whole)).encode()


def restore(path: Path, original: bytes, mode: int) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(original)
    os.chmod(path, mode)


def run(argv: list[str]) -> tuple[int, str, str, bool]:
    """``tuner ARGV`` in this process: exit code, stdout, stderr, whether a traceback
    escaped."""
    from tuner.cli import main

    out, err = io.StringIO(), io.StringIO()
    escaped = False
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
        except ReachedRay:
            code = 0
        except BaseException:  # a traceback a user would see
            escaped = True
            code = 1
            traceback.print_exc()
    return code, out.getvalue(), err.getvalue(), escaped


def _alarm(signum: int, frame: Any) -> None:
    raise TimedOut(f"no answer in {CASE_TIMEOUT_S} s")


def _reset_peak() -> None:
    """Start this process's peak RSS afresh (Linux: ``5`` in ``clear_refs``); a child
    otherwise starts with its parent's, as it was when it forked."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb() -> float:
    """This process's peak RSS since :func:`_reset_peak`, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stop_at_ray(*args: Any, **kwargs: Any) -> None:
    raise ReachedRay()


BOMB = b""


def main() -> None:
    global BOMB
    cases = json.loads(Path(sys.argv[1]).read_text())
    outside = Path(os.environ["HOSTILE_OUTSIDE"])
    if any(case["mutation"] == "bomb" for case in cases):
        BOMB = _bomb()
    import ray

    ray.init = _stop_at_ray  # refit and resume stop here: see the module doc
    signal.signal(signal.SIGALRM, _alarm)
    results = []
    for case in cases:
        path = Path(case["path"])
        original, mode = path.read_bytes(), path.stat().st_mode & 0o777
        mutate(path, case["mutation"], original, outside)
        start = time.perf_counter()
        _reset_peak()
        signal.alarm(CASE_TIMEOUT_S)
        try:
            code, out, err, escaped = run(case["argv"])
        except TimedOut as exc:
            code, out, err, escaped = 124, "", str(exc), False
        finally:
            signal.alarm(0)
            restore(path, original, mode)
        for leftover in case.get("clean", []):
            shutil.rmtree(leftover, ignore_errors=True)
        results.append(
            {
                **case,
                "code": code,
                "stdout": out[-2000:],
                "stderr": err[-4000:],
                "escaped": escaped,
                "seconds": round(time.perf_counter() - start, 2),
                "peak_rss_mb": _peak_mb(),
            }
        )
        Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
