"""The settings object: every variable read once, with its default, and no import side effect."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainables import RAY_DEFAULTS, Settings, settings, use_cache_dir


def test_defaults_and_every_variable():
    bare = Settings.from_environ({"HOME": "/home/u"})
    assert bare.cache_dir == Path("/home/u/.cache/flower-tune")
    assert bare.config_dir == Path("/home/u/.config/flower-tune")
    assert (bare.storage, bare.data, bare.ray_address, bare.feature_cache_mb) == (None,) * 4
    assert bare.feature_cache and bare.secrets == ()
    full = Settings.from_environ(
        {
            "HOME": "/home/u",
            "TUNER_CACHE": "/c",
            "XDG_CONFIG_HOME": "/x",
            "TUNER_STORAGE": "s3://b/p",
            "TUNER_DATA": "/photos",
            "RAY_ADDRESS": "10.0.0.1:6379",
            "TUNER_FEATURE_CACHE": "off",
            "TUNER_FEATURE_CACHE_MB": "512",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
            "AWS_SESSION_TOKEN": "ab",  # too short to scrub without mangling text
        }
    )
    assert full.cache_dir == Path("/c") and full.config_dir == Path("/x/flower-tune")
    assert (full.storage, full.data, full.ray_address) == ("s3://b/p", "/photos", "10.0.0.1:6379")
    assert not full.feature_cache and full.feature_cache_mb == 512.0
    assert full.secrets == ("s3cr3t-value",)


def test_read_once_until_the_cache_folder_is_changed(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path / "a"))
    assert settings().cache_dir == tmp_path / "a"
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path / "b"))
    assert settings().cache_dir == tmp_path / "a"  # read once
    use_cache_dir(tmp_path / "c")  # what --cache-dir does; Ray workers inherit it
    assert settings().cache_dir == tmp_path / "c"


@pytest.mark.slow
def test_importing_the_packages_writes_nothing_into_the_environment():
    code = (
        # Ray, and torch's compiler (torchvision's transforms import it), write variables
        # of their own when imported: import them first.
        "import os, json, ray, ray.tune, torch, torch._dynamo; before = dict(os.environ); "
        "import tuner, tuner.cli, tuner.search._run, trainables, trainables.train._train; "
        "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in RAY_DEFAULTS}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_worker_lines_reach_a_pipe_without_terminal_colour_codes(monkeypatch):
    """Off a terminal (pytest captures both streams) Ray is told not to colour each worker
    line's prefix; a colour the user asked for is kept."""
    from trainables._settings import apply_ray_defaults

    environ = {k: v for k, v in os.environ.items() if k != "RAY_COLOR_PREFIX"}
    monkeypatch.setattr(os, "environ", environ)  # nothing set here outlives the test
    apply_ray_defaults()
    assert environ["RAY_COLOR_PREFIX"] == "0"
    environ["RAY_COLOR_PREFIX"] = "1"
    apply_ray_defaults()
    assert environ["RAY_COLOR_PREFIX"] == "1"
