import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from tuner import UsageError, available_spaces, load_space
from tuner.spaces._spaces import parse_space


def test_builtin_spaces_exist():
    assert {"default", "resnet", "lite", "smoke"} <= set(available_spaces())


@pytest.mark.parametrize("name", ["default", "resnet", "lite", "lite-accurate", "smoke"])
def test_builtin_spaces_parse_into_ray_tune_distributions(name):
    space = load_space(name)
    params = space.param_space()
    assert isinstance(params["lr"], Float)
    assert isinstance(params["lr"].get_sampler(), LogUniform)
    assert isinstance(params["batch_size"], Categorical)
    assert isinstance(params["step_size"], Integer)
    assert isinstance(params["freeze_depth"], Integer)
    # Every space searches the augmentation strength unless it says why not; the fast
    # ones over a few values, so trials share the frozen activations of augmented views.
    if name == "lite-accurate":
        assert params["aug_strength"] == 0.0
        assert "Augmentation is left out" in space.description
    elif name in ("lite", "smoke"):
        assert isinstance(params["aug_strength"], Categorical)
        assert 0.0 in space.possible_values("aug_strength")
        assert max(space.possible_values("aug_strength")) >= 0.3
    else:
        assert isinstance(params["aug_strength"], Float)
    assert params["max_epochs"] == space.budget.max_epochs
    assert space.budget.num_samples >= 4


def test_default_space_searches_the_contract_keys_and_seeds_the_classic_recipe():
    space = load_space("default")
    assert {"lr", "batch_size", "step_size", "freeze_depth", "aug_strength", "optimizer"} <= set(
        space.searched
    )
    assert space.constants["model"] == "resnet18" and space.constants["pretrained"] is True
    classic = space.points_to_evaluate[0]
    assert classic["lr"] == 1e-3 and classic["batch_size"] == 32 and classic["step_size"] == 7
    assert space.constants["gamma"] == 0.1


def test_spaces_load_from_a_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("params:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\nbudget:\n  num_samples: 3\n")
    space = load_space(str(path))
    assert space.name == "mine" and space.budget.num_samples == 3


BAD_SPACES = [
    ("params:\n  lr: {loguniform: [0.1, 0.01]}\n", "low must be < high"),
    ("params:\n  lr: {uniform: [-1.0, 0.1]}\n", "lr must be > 0"),
    ("params:\n  lr: {loguniform: [0.0, 0.1]}\n", "loguniform needs low > 0"),
    ("params:\n  learning_rate: 0.1\n", "unknown key 'learning_rate'"),
    ("params:\n  batch_size: {choice: [0, 32]}\n", "batch_size must be >= 1"),
    ("params:\n  freeze_depth: {randint: [0, 6]}\n", "freeze_depth must be in 0..4"),
    ("params:\n  model: vgg16\n", "unknown model 'vgg16'"),
    ("params:\n  image_size: 16\n", "image_size must be >= 32"),
    ("params:\n  lr: {normal: [0, 1]}\n", "unknown distribution 'normal'"),
    ("budget:\n  num_samples: 0\n", "num_samples must be >= 1"),
    ("budget:\n  epochs: 3\n", "unknown budget key(s): epochs"),
    (
        "params:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\npoints_to_evaluate:\n  - {lr: 1.0}\n",
        "outside its distribution",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPACES)
def test_bad_spaces_are_rejected_with_a_clear_message(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_space(str(path))
    assert message in str(err.value)
    assert "bad.yaml" in str(err.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("params:\n  lr: 0.1\n  batch_size: [32, 64\n")
    with pytest.raises(UsageError) as err:
        load_space(str(path))
    assert f"{path}:" in str(err.value) and "YAML syntax error" in str(err.value)


def test_unknown_space_name_lists_the_known_ones():
    with pytest.raises(UsageError) as err:
        load_space("nope")
    known = available_spaces()
    assert {"default", "lite", "lite-accurate", "resnet", "smoke"} <= set(known)
    assert f"known spaces: {', '.join(sorted(known))}" in str(err.value)


def test_budget_overrides_are_validated():
    space = load_space("smoke")
    assert space.budget.override(num_samples=9, max_epochs=None).num_samples == 9
    with pytest.raises(UsageError):
        space.budget.override(gpus_per_trial=1.5)


def test_parse_space_accepts_plain_dicts():
    space = parse_space({"params": {"lr": {"choice": [0.1, 0.01]}}}, name="d")
    assert space.possible_values("lr") == [0.1, 0.01]


def schema_errors(document: object) -> list[str]:
    """What ``tuner spaces --schema``'s schema finds wrong in ``document``."""
    import json

    import jsonschema
    from conftest import run_cli

    code, printed, err = run_cli("spaces", "--schema")
    assert code == 0, err
    schema = json.loads(printed)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    return [error.message for error in validator.iter_errors(document)]


@pytest.mark.parametrize("name", available_spaces())
def test_every_builtin_space_file_meets_the_schema(name):
    import yaml

    from tuner.spaces._spaces import spaces_dir

    assert schema_errors(yaml.safe_load((spaces_dir() / f"{name}.yaml").read_text())) == []


@pytest.mark.parametrize(
    "change",
    [
        {"budjet": {"num_samples": 2}},  # a misspelt section
        {"params": {"model": "efficientnet_lite0", "learning_rate": 0.1}},  # no such trial key
        {"params": {"model": "vgg16"}},  # not in the registry
        {"params": {"lr": {"logunif": [1e-4, 1e-2]}}},  # no such distribution
        {"params": {"optimizer": {"choice": ["adam", "rmsprop"]}}},  # a choice it cannot take
        {"params": {"batch_size": True}},  # a bool for an integer
        {"budget": {"max_epochs": "ten"}},
        {"budget": {"num_samples": 2.5}},
        {"scheduler": {"asha": {"grace": 2}}},  # a setting asha does not have
        {"searcher": "bayes"},
        {"objectives": [{"val_acc": "max"}, {"latency": "min"}]},
    ],
)
def test_the_schema_refuses_what_the_space_parser_refuses(change, tmp_path):
    document = {"params": {"model": "efficientnet_lite0", "lr": {"loguniform": [1e-4, 1e-2]}}}
    document |= change
    assert schema_errors(document), change
    with pytest.raises(UsageError):
        parse_space(document, "changed")


def test_schema_and_a_space_name_together_are_refused():
    from conftest import run_cli

    code, _, err = run_cli("spaces", "smoke", "--schema")
    assert code == 2 and "give a space to show or --schema, not both" in err


def test_a_count_in_the_budget_is_a_whole_number():
    raw = {"params": {"model": "efficientnet_lite0"}, "budget": {"num_samples": 4.0}}
    budget = parse_space(raw, "whole").budget
    assert budget.num_samples == 4 and isinstance(budget.num_samples, int)
    raw["budget"] = {"num_samples": 2.5}
    with pytest.raises(UsageError, match=r"budget: num_samples must be a whole number, got 2\.5"):
        parse_space(raw, "half")
