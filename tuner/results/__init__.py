"""What a search leaves and what is made from it: the leaderboard, scores on the test
split, inference, refits, ensembles, exports, predictions, reports and the list of
experiments in a storage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.results._compare import compare, front_text, render_compare
    from tuner.results._distill import DistillRequest, distill, load_distilled
    from tuner.results._ensemble import choose_ensemble
    from tuner.results._export import check_output, export_ensemble, export_trial
    from tuner.results._front import front, pick_rank
    from tuner.results._holdout import (
        holdout_lines,
        made_model_lines,
        record_ensemble,
        score_module_on_test,
        score_top_trials,
    )
    from tuner.results._inference import (
        RankedTrial,
        evaluate_folder,
        evaluate_test_split,
        load_ranked_trial,
    )
    from tuner.results._leaderboard import (
        attach_test_scores,
        best_config,
        build_leaderboard,
        plain,
        render,
        tie_note,
        write_leaderboard,
    )
    from tuner.results._listing import is_finished, list_experiments, render_list
    from tuner.results._predict import (
        expand_images,
        format_predictions,
        load_export,
        predict_images,
        predictions_json,
        resolve_device,
        write_predictions,
    )
    from tuner.results._refit import load_refit, refit
    from tuner.results._report import write_report
    from tuner.results._tta import apply_tta, choose_tta

__getattr__ = lazy_names(
    __name__,
    {
        "apply_tta": "_tta",
        "attach_test_scores": "_leaderboard",
        "best_config": "_leaderboard",
        "build_leaderboard": "_leaderboard",
        "check_output": "_export",
        "choose_ensemble": "_ensemble",
        "choose_tta": "_tta",
        "compare": "_compare",
        "distill": "_distill",
        "DistillRequest": "_distill",
        "evaluate_folder": "_inference",
        "evaluate_test_split": "_inference",
        "expand_images": "_predict",
        "export_ensemble": "_export",
        "export_trial": "_export",
        "format_predictions": "_predict",
        "front": "_front",
        "front_text": "_compare",
        "holdout_lines": "_holdout",
        "is_finished": "_listing",
        "list_experiments": "_listing",
        "load_distilled": "_distill",
        "load_export": "_predict",
        "load_ranked_trial": "_inference",
        "load_refit": "_refit",
        "made_model_lines": "_holdout",
        "pick_rank": "_front",
        "plain": "_leaderboard",
        "predict_images": "_predict",
        "predictions_json": "_predict",
        "RankedTrial": "_inference",
        "record_ensemble": "_holdout",
        "refit": "_refit",
        "render": "_leaderboard",
        "render_compare": "_compare",
        "render_list": "_listing",
        "resolve_device": "_predict",
        "score_module_on_test": "_holdout",
        "score_top_trials": "_holdout",
        "tie_note": "_leaderboard",
        "write_leaderboard": "_leaderboard",
        "write_predictions": "_predict",
        "write_report": "_report",
    },
)

__all__ = [
    "DistillRequest",
    "RankedTrial",
    "apply_tta",
    "attach_test_scores",
    "best_config",
    "build_leaderboard",
    "check_output",
    "choose_ensemble",
    "choose_tta",
    "compare",
    "distill",
    "evaluate_folder",
    "evaluate_test_split",
    "expand_images",
    "export_ensemble",
    "export_trial",
    "format_predictions",
    "front",
    "front_text",
    "holdout_lines",
    "is_finished",
    "list_experiments",
    "load_distilled",
    "load_export",
    "load_ranked_trial",
    "load_refit",
    "made_model_lines",
    "pick_rank",
    "plain",
    "predict_images",
    "predictions_json",
    "record_ensemble",
    "refit",
    "render",
    "render_compare",
    "render_list",
    "resolve_device",
    "score_module_on_test",
    "score_top_trials",
    "tie_note",
    "write_leaderboard",
    "write_predictions",
    "write_report",
]
