"""Kills at any moment: ``kill -9`` of a search's whole process group, K times, then resume.

Runs a smoke search (10 trials of up to 6 epochs) over a subset of the photos and kills its driver's
process group (the driver, Ray and every trial worker) with SIGKILL at K
random moments spread over its life: while photos decode, before the first
trial, mid-epoch, while checkpoints or the leaderboard are written. After
each kill it runs ``tuner resume`` (which also restarts a search that died
before its first trial was recorded), and after the last kill lets the
search finish. Then it checks what a user relies on:

* exactly ``num_samples`` distinct trials, all ended (completed, stopped
  early or diverged), in the leaderboard;
* epochs redone: every epoch a trial reported more than once (a resumed
  trial continues from its last checkpoint the experiment state knew; at
  most the epochs running at a kill are lost);
* the Optuna study agrees with the leaderboard (one Optuna trial per Tune
  trial, PRUNED where it says stopped_early, COMPLETE where completed).

One kill (``--ahead-kill``, the middle one by default) is not at a random
moment but at the one a resume once got wrong: it watches the Optuna journal and
kills the instant the study is told a trial ended (pruned by ASHA, or
completed), before Ray saved the experiment state that says so. The table says
whether the journal was ahead of the saved state then; the resume cuts the
study back to that state, and the trial runs on.

Prints ``kills``, ``kills_survived`` (kills after which the search still
finished with every check passing), ``journal_ahead_kills`` (kills that left
the journal ahead of the saved state) and ``epochs_redone``.

    uv run python benchmarks/chaos.py                 # K = 10 kills (~10 min on 2 CPUs)
    uv run python benchmarks/chaos.py --kills 3 --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
from _common import (
    DEFAULT_DATA,
    ROOT,
    add_search_flags,
    check_data,
    descendant_pids,
    environment_line,
    experiment_at,
    load_line,
    make_subset,
    print_headlines,
    print_table,
    work_dir,
)

STATE_OF_STATUS = {"completed": "COMPLETE", "stopped_early": "PRUNED", "diverged": "FAIL"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="kill -9 a smoke search's process group K times at random moments, "
        "resume after each, and check the finished experiment.",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--kills", type=int, default=10, help="K: kills before the last run")
    parser.add_argument("--per-class", type=int, default=300, help="photos per class used")
    parser.add_argument("--num-samples", type=int, default=10, help="trials of the search")
    parser.add_argument("--max-epochs", type=int, default=6, help="epochs per trial at most")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument(
        "--max-delay", type=float, default=40.0, help="latest kill moment after a start, s"
    )
    parser.add_argument(
        "--ahead-kill",
        type=int,
        default=None,
        help="which kill waits for the study to be told a trial ended (default: the middle)",
    )
    add_search_flags(parser, "12 photos per class, kills within 20 s")
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.max_delay, args.num_samples, args.max_epochs = 12, 20.0, 4, 3
    return args


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m tuner ARGS`` in a process group of its own, its output (unbuffered, so
    the log shows how far it got) written to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tuner", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the driver's process group and every process below it (Ray's daemons
    and workers start sessions of their own), all at once."""
    below = descendant_pids(proc.pid)
    for target in (-proc.pid, *below):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)
    proc.wait()


def phase(log: Path) -> str:
    """What the search was doing when it was killed, from the last meaningful line."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        for mark, name in (
            ("Wrote ", "writing the leaderboard"),
            ("Trials:", "writing the leaderboard"),
            ("Restored on", "training"),
            ("Estimate:", "training"),
            ("Current time", "starting or running trials"),
            ("Results:", "starting trials"),
            ("Search:", "starting Ray and trials"),
            ("Split:", "starting Ray"),
            ("Resuming", "decoding photos for the resume"),
        ):
            if line.lstrip().startswith(mark):
                return name
    return "decoding photos"


TRIAL_ENDED = 6  # Optuna's journal operation SET_TRIAL_STATE_VALUES
ENDED_STATES = {1, 2}  # TrialState.COMPLETE, PRUNED (FAIL is also how resume marks orphans)


def wait_for_an_end(journal: Path, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait until the study is told a trial completed or was pruned (a new line in the
    journal, written before Ray saves the state that says so); the journal's length then,
    None if the run ended or ``timeout`` passed first."""
    start = journal.stat().st_size if journal.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists():
            with journal.open("rb") as f:
                f.seek(start)
                tail = f.read()
            for line in tail.split(b"\n")[:-1]:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("op_code") == TRIAL_ENDED and entry.get("state") in ENDED_STATES:
                        return start + tail.index(line) + len(line) + 1
        time.sleep(0.01)
    return None


def journal_ahead(exp: Path, told_at: int) -> str:
    """Whether the journal was ahead of the saved state when the study was told."""
    sys.path.insert(0, str(ROOT))
    from tuner.search._journal import journal_length

    saved = journal_length(experiment_at(exp))
    if saved is None:
        return "no journal length with the saved state"
    if saved < told_at:
        return f"journal {told_at - saved} B ahead of the saved state"
    return "the state was saved first"


def reported_epochs(exp: Path) -> Counter[tuple[str, int]]:
    experiment = experiment_at(exp)
    return Counter(
        (t, int(r["epoch"])) for t in experiment.trial_ids() for r in experiment.reports(t)
    )


def main() -> None:
    args = parse_args()
    data = check_data(args.data)
    rng = random.Random(args.seed)
    print(f"# Chaos: {args.kills} x kill -9 of a smoke search, {environment_line()}")
    print(f"# {load_line()}")
    with work_dir(args.keep, "bench-chaos-") as tmp:
        photos = make_subset(data, tmp / "photos", per_class=args.per_class)
        storage = tmp / "results"
        exp = storage / "chaos"
        first = ["search", "--space", "smoke", "--data", str(photos), "--storage", str(storage),
                 "--name", "chaos", "--seed", "0", "--num-samples", str(args.num_samples),
                 "--max-epochs", str(args.max_epochs)]  # fmt: skip
        again = ["resume", "chaos", "--storage", str(storage)]
        rows, t0 = [], time.perf_counter()
        ahead_kill = args.ahead_kill or max(1, (args.kills + 1) // 2)
        ahead = 0
        # One kill moment in each of K equal slices of [0, max_delay], in random order:
        # early kills (decoding, starting Ray) as well as late ones (training, writing).
        width = args.max_delay / args.kills
        delays = [rng.uniform(i * width, (i + 1) * width) for i in range(args.kills)]
        rng.shuffle(delays)
        for kill in range(1, args.kills + 1):
            args_now = again if (exp / "tuner.json").exists() else first
            log = tmp / f"run-{kill}.log"
            proc = start(args_now, log)
            delay = delays[kill - 1]
            started = time.monotonic()
            if kill == ahead_kill:
                told_at = wait_for_an_end(exp / "optuna_journal.log", proc, 300)
                if told_at is None:
                    if proc.poll() is None:
                        kill_group(proc)
                    print(f"  run {kill}: no trial ended while it ran (exit {proc.returncode})")
                    break
                kill_group(proc)
                delay = time.monotonic() - started
                where = f"a trial's end told to the study: {journal_ahead(exp, told_at)}"
                ahead += "B ahead" in where
                rows.append([kill, args_now[0], f"{delay:.1f}", where])
                print(f"  kill {kill}: {args_now[0]} killed after {delay:.1f} s, {where}")
                continue
            try:
                proc.wait(timeout=delay)
                print(
                    f"  run {kill}: ended by itself (exit {proc.returncode}) before {delay:.1f} s"
                )
                break
            except subprocess.TimeoutExpired:
                pass
            where = phase(log)
            kill_group(proc)
            rows.append([kill, args_now[0], f"{delay:.1f}", where])
            print(f"  kill {kill}: {args_now[0]} killed after {delay:.1f} s, {where}", flush=True)
        final = subprocess.run(
            [sys.executable, "-m", "tuner", *(again if (exp / "tuner.json").exists() else first)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        problems = []
        if final.returncode != 0:
            problems.append(f"the last run exited {final.returncode}: {final.stderr[-1500:]}")
        csv = exp / "leaderboard.csv"
        board = pd.read_csv(csv, dtype={"trial_id": str}) if csv.exists() else None
        num_samples = experiment_at(exp).record().space["budget"]["num_samples"]
        if board is None:
            problems.append("no leaderboard")
        else:
            if len(board) != num_samples or not board["trial_id"].is_unique:
                problems.append(f"{len(board)} trials in the leaderboard, not {num_samples}")
            if not board["status"].isin(list(STATE_OF_STATUS)).all():
                problems.append(f"unfinished trials: {sorted(set(board['status']))}")
            sys.path.insert(0, str(ROOT))
            from tuner.search._study import load_study

            study = {
                t.user_attrs.get("tune_trial_id"): t for t in load_study(experiment_at(exp)).trials
            }
            for _, row in board.iterrows():
                trial = study.get(row["trial_id"])
                expected = STATE_OF_STATUS.get(row["status"])
                if trial is None or trial.state.name != expected:
                    got = None if trial is None else trial.state.name
                    problems.append(
                        f"trial {row['trial_id']}: Optuna {got}, leaderboard {row['status']}"
                    )
        counts = reported_epochs(exp)
        redone = sum(n - 1 for n in counts.values())
    print()
    print_table(["kill", "command", "after s", "while"], rows)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"wall time, all runs: {wall:.0f} s; epochs reported twice or more: {redone}")
    print(f"# at the end: {load_line()}")
    print_headlines(
        {
            "kills": len(rows),
            "kills_survived": 0 if problems else len(rows),
            "journal_ahead_kills": ahead,
            "epochs_redone": redone,
        }
    )


if __name__ == "__main__":
    main()
