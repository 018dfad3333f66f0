"""After the trials: the leaderboard, the test scores and the summary a user reads."""

from __future__ import annotations

import json

from tuner.engine import train_session_dir
from tuner.results import (
    attach_test_scores,
    best_config,
    build_leaderboard,
    holdout_lines,
    score_top_trials,
    tie_note,
    write_leaderboard,
)
from tuner.search._journal import forget_journal
from tuner.search._prepare import Print
from tuner.spaces import COSTS, Budget
from tuner.storage import Experiment


def finish(exp: Experiment, budget: Budget, say: Print) -> int:
    """Write the leaderboard files and print the summary; 0 if the search completed.

    A search is unfinished when a trial is still running, pending or paused,
    or when fewer than ``num_samples`` trials exist without a time budget
    that could explain it.
    """
    board = build_leaderboard(exp)
    unfinished = bool(board["status"].isin(["running", "pending", "paused"]).any()) or (
        budget.time_budget_s is None and len(board) < budget.num_samples
    )
    if not unfinished and score_top_trials(exp, board, budget.test_top_k, say):
        board = attach_test_scores(board, exp)
    written = write_leaderboard(exp, board)
    counts = board["status"].value_counts().to_dict()
    say("")
    say(f"Trials: {len(board)} ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    best = best_config(board)
    if best:
        say(
            f"Best trial {best['trial_id']}: val_acc {best['val_acc']:.4f} "
            f"(± {best['val_acc_se']:.4f}) at epoch {best['best_epoch']}{tie_note(board)}"
        )
        say("  " + json.dumps(best["config"]))
        say(f"  checkpoint: {best['checkpoint']}")
    if "pareto" in board:
        from tuner.results import front_text

        on_front = board[board["pareto"]]
        say(f"Pareto front ({len(on_front)} trials): {front_text(board) or '-'}")
        cost = next(c for c in COSTS if c in board)
        if len(on_front):
            limit = f"{float(on_front[cost].median()):.3g}"
            say(f'  export the most accurate under a {cost}: python -m tuner export {exp.name} '
                f'--pick "{cost}<={limit}" --output DIR')  # fmt: skip
    for line in holdout_lines(board):
        say(line)
    say("Wrote " + ", ".join(written))
    if unfinished:
        say(f"The search was interrupted. Continue it with:\n  {exp.resume_command()}")
        return 1
    forget_journal(exp)  # the study is in the storage; a remote one's local copy goes
    _drop_driver_staging(exp)
    return 0


def _drop_driver_staging(exp: Experiment) -> None:
    """Delete Ray Tune's local staging copy of a finished remote experiment.

    Ray stages the experiment state and the trials' results and logs under its
    session folder (``/tmp/ray/session_*/artifacts/TIMESTAMP/NAME/``) before
    uploading them; once the search has finished they are in the bucket, and
    that copy is the only trace of the experiment left on this disk.
    """
    import shutil

    import ray

    if exp.storage.is_local or not ray.is_initialized():
        return
    for folder in train_session_dir().glob(f"*/{exp.name}"):
        shutil.rmtree(folder, ignore_errors=True)
