"""The Optuna study of a search, persisted where Optuna's own tools open it.

The driver is the only writer of ``results/NAME/optuna_journal.log`` (Optuna's
journal file storage), so a user can inspect or continue the study with::

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="NAME",
        storage=JournalStorage(JournalFileBackend("results/NAME/optuna_journal.log")),
    )

or ``optuna-dashboard results/NAME/optuna_journal.log``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

JOURNAL_FILE = "optuna_journal.log"


def journal_storage(exp_dir: Path) -> Any:
    """Optuna journal storage in the experiment folder."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(exp_dir / JOURNAL_FILE)))


def make_searcher(
    name: str, exp_dir: Path, metric: str, seed: int, points: list[dict[str, Any]]
) -> Any:
    """Seeded TPE through Ray's OptunaSearch, its study persisted in ``exp_dir``."""
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(
        metric=metric,
        mode="max",
        seed=seed,
        points_to_evaluate=points or None,
        study_name=name,
        storage=journal_storage(exp_dir),
    )


def load_study(exp_dir: Path, name: str) -> Any:
    """The persisted study of experiment ``name``."""
    import optuna

    return optuna.load_study(study_name=name, storage=journal_storage(exp_dir))
