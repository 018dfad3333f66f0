import pytest

from trainables import ConfigError, TrialConfig


def test_defaults_are_valid_and_round_trip():
    cfg = TrialConfig()
    cfg.validate()
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg


def test_coerces_yaml_and_optuna_values():
    cfg = TrialConfig.from_dict({"batch_size": 32.0, "lr": 1, "freeze_depth": 2})
    assert cfg.batch_size == 32 and isinstance(cfg.batch_size, int)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"batch_size": 2.5}, "batch_size must be a int"),
        ({"freeze_depth": 5}, "freeze_depth must be in 0..4"),
        ({"aug_strength": 1.5}, "aug_strength must be in [0, 1]"),
        ({"model": "vgg16"}, "unknown model 'vgg16'"),
        ({"optimizer": "rmsprop"}, "unknown optimizer"),
        ({"image_size": 16}, "image_size must be >= 32"),
        ({"pretrained": "yes"}, "pretrained must be a bool"),
        ({"learning_rate": 0.1}, "unknown trial key(s): learning_rate"),
    ],
)
def test_rejects_bad_values_with_the_key_named(changes, message):
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_dict(changes)
    assert message in str(err.value)
