"""The project's settings from the environment, read once per process into one typed object.

Every environment variable the project reads is a field here (secrets only as
values to scrub from messages). Both packages read it: ``trainables`` (inside
the trials) and ``tuner`` (the commands), so it lives in the lower one. A Ray
worker reads its own process environment, which a local cluster the driver
starts inherits from the driver.

Example:
    >>> s = Settings.from_environ({"TUNER_CACHE": "/data/cache", "HOME": "/home/u"})
    >>> s.cache_dir, s.config_dir
    (PosixPath('/data/cache'), PosixPath('/home/u/.config/flower-tune'))
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Settings Ray reads from the environment, some when it is imported: the command
# line applies them (as defaults: a value already set wins) before it imports Ray.
RAY_DEFAULTS = {
    # The compact CLIReporter table instead of Ray's verbose new output.
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "1",
    # Save the experiment state (trials, checkpoints, Optuna study) at most 2 s
    # after each result, so a killed driver loses at most the epochs in flight.
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    # Those frequent snapshots are intended; Ray would warn about each burst.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Workers run this interpreter as it is; Ray must not rebuild it with `uv run`.
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    # No usage-statistics prompt or upload.
    "RAY_USAGE_STATS_ENABLED": "0",
}

_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS")
_OFF = ("off", "0", "false")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What the environment sets, each with its default."""

    cache_dir: Path  # $TUNER_CACHE, else ~/.cache/flower-tune: decoded photos, activations
    config_dir: Path  # $XDG_CONFIG_HOME/flower-tune, else ~/.config/flower-tune
    storage: str | None  # $TUNER_STORAGE: where experiments live when --storage is not given
    data: str | None  # $TUNER_DATA: the photos when --data is not given
    ray_address: str | None  # $RAY_ADDRESS: a Ray cluster to join when --address is not given
    feature_cache: bool  # $TUNER_FEATURE_CACHE=off: trials keep no activations on disk
    feature_cache_mb: float | None  # $TUNER_FEATURE_CACHE_MB: one trial's activation limit
    test_photos: Path | None  # $TUNER_TEST_FLOWERS: the real photos the tests read
    secrets: tuple[str, ...]  # values of credential variables, never printed

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> Settings:
        home = Path(env.get("HOME") or Path.home())
        config = env.get("XDG_CONFIG_HOME")
        megabytes = env.get("TUNER_FEATURE_CACHE_MB", "")
        try:
            limit = float(megabytes) if megabytes else None
        except ValueError:
            limit = None
        return cls(
            cache_dir=Path(env.get("TUNER_CACHE") or home / ".cache" / "flower-tune"),
            config_dir=Path(config) / "flower-tune" if config else home / ".config" / "flower-tune",
            storage=env.get("TUNER_STORAGE") or None,
            data=env.get("TUNER_DATA") or None,
            ray_address=env.get("RAY_ADDRESS") or None,
            feature_cache=env.get("TUNER_FEATURE_CACHE", "").lower() not in _OFF,
            feature_cache_mb=limit,
            test_photos=Path(env["TUNER_TEST_FLOWERS"]) if env.get("TUNER_TEST_FLOWERS") else None,
            secrets=tuple(v for k in _SECRET_VARIABLES if len(v := env.get(k, "")) >= 4),
        )


@functools.cache
def settings() -> Settings:
    """This process's settings, read from its environment on first use."""
    return Settings.from_environ(os.environ)


def use_cache_dir(folder: Path) -> None:
    """Make ``folder`` the cache folder of this process and of the Ray workers it starts
    (they inherit ``$TUNER_CACHE``)."""
    os.environ["TUNER_CACHE"] = str(folder)
    settings.cache_clear()


def apply_ray_defaults() -> None:
    """Put :data:`RAY_DEFAULTS` into this process's environment where nothing else is set;
    called by the command line before it imports Ray."""
    for key, value in RAY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Ray prefixes each worker line "(train_classifier pid=N)" in colour; a file or a pipe
    # gets it without the terminal's escape codes.
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
