"""Config: every recipe loads; `--set` parsing and overrides; clear errors for unknown keys,
sections, recipes, wrong types and out-of-range values; config.toml round-trips."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from deepstep.config import (
    RunConfig,
    all_sections,
    apply_overrides,
    help_lines,
    load_config,
    parse_value,
    read_toml,
)
from deepstep.engine.rundir import RunDir
from deepstep.errors import UserError
from deepstep.registry import DATASETS, MODELS, TASKS, model_options, recipe_paths

RECIPES = sorted(recipe_paths())


def test_there_are_recipes():
    assert "digits-mlp" in RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_names_registered_parts(name):
    cfg = load_config(name)
    assert cfg.recipe == name
    assert cfg.description, f"recipe {name} needs a description (shown by `deepstep list`)"
    assert cfg.task in TASKS
    assert cfg.data.name in DATASETS
    assert cfg.model["name"] in MODELS
    # the model section is resolved: every factory option is present, nothing else
    assert set(cfg.model) == {"name", *model_options(cfg.model["name"])}
    for key in cfg.expect:
        assert key.split("/")[0] in ("test", "val", "train", "rollout", "gan", "eval", "samples"), key


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_round_trips_through_run_dir(name, tmp_path):
    cfg = load_config(name, ["train.epochs=3"])
    run = RunDir.create(tmp_path / "run", cfg.to_dict())
    again = RunConfig.from_dict(read_toml(run.config), where=str(run.config))
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_recipe_by_file_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('task = "classify"\n[data]\nname = "digits"\n[model]\nname = "linear"\n[train]\nepochs = 2\n')
    cfg = load_config(str(path))
    assert cfg.recipe == "mine" and cfg.model == {"name": "linear"} and cfg.train.epochs == 2
    assert cfg.optim.lr == 1e-3  # defaults fill the rest
    with pytest.raises(UserError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))


def test_invalid_toml_file_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[train\nepochs = 2\n")
    with pytest.raises(UserError, match=r"broken\.toml.*not valid TOML"):
        load_config(str(path))


# --- --set parsing -----------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("3e-4", 3e-4), ("1", 1), ("0.5", 0.5), ("true", True), ("false", False),
    ("[256,128]", [256, 128]), ("[256, 128]", [256, 128]), ("'text'", "text"), ('"x y"', "x y"),
    ("adam", "adam"), ("fashion-mnist", "fashion-mnist"), ("val/loss", "val/loss"), ("", ""),
])
def test_parse_value_is_toml_and_bare_words_are_strings(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_overrides_set_typed_values():
    cfg = load_config("digits-mlp", ["optim.lr=3e-4", "train.epochs=2", "data.normalize=false",
                                     "model.hidden=[32, 16]", "optim.name=sgd", "train.monitor=val/loss"])
    assert cfg.optim.lr == 3e-4 and cfg.train.epochs == 2 and cfg.data.normalize is False
    assert cfg.model["hidden"] == [32, 16] and cfg.optim.name == "sgd" and cfg.train.monitor == "val/loss"


def test_int_is_accepted_for_float_fields():
    cfg = load_config("digits-mlp", ["optim.lr=1", "data.val_split=0"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.val_split == 0.0 and isinstance(cfg.data.val_split, float)


def test_overrides_do_not_mutate_the_input():
    d = {"train": {"epochs": 5}}
    out = apply_overrides(d, ["train.epochs=7", "optim.lr=0.1"])
    assert d == {"train": {"epochs": 5}}
    assert out == {"train": {"epochs": 7}, "optim": {"lr": 0.1}}


def test_later_override_wins():
    assert load_config("digits-mlp", ["train.epochs=2", "train.epochs=4"]).train.epochs == 4


def test_model_name_switches_model_and_its_defaults():
    base = load_config("digits-mlp")
    assert base.model["name"] == "mlp" and base.model["dropout"] == 0.2
    cfg = load_config("digits-mlp", ["model.name=convnet", "model.channels=[8]"])
    assert cfg.model["name"] == "convnet"
    assert cfg.model["channels"] == [8]
    assert cfg.model["hidden"] == [128]  # convnet's default, not the recipe's MLP widths
    assert cfg.model["dropout"] == 0.0  # not the recipe's mlp dropout
    assert set(cfg.model) == {"name", *model_options("convnet")}
    assert load_config("digits-mlp", ["model.name=linear"]).model == {"name": "linear"}


def test_expect_can_be_overridden():
    assert load_config("digits-mlp", ["expect.test/acc=0.5"]).expect["test/acc"] == 0.5


# --- errors ------------------------------------------------------------------------------

def _error(overrides, recipe="digits-mlp") -> str:
    with pytest.raises(UserError) as e:
        load_config(recipe, overrides)
    return str(e.value)


def test_unknown_key_names_key_valid_keys_and_suggestion():
    msg = _error(["optim.lrr=1e-3"])
    assert "'optim.lrr'" in msg
    assert "Did you mean 'lr'?" in msg
    valid = msg.split("Valid keys:")[1]
    for f in fields(all_sections()["optim"]):
        assert f.name in valid


def test_unknown_key_without_suggestion_still_lists_valid_keys():
    msg = _error(["train.zzzz=1"])
    assert "'train.zzzz'" in msg and "Did you mean" not in msg and "epochs" in msg


def test_top_level_key_suggests_its_section():
    msg = _error(["epochs=3"])
    assert "Unknown key 'epochs'" in msg and "'train.epochs'" in msg


def test_unknown_section_with_suggestion():
    msg = _error(["optimm.lr=1e-3"])
    assert "Unknown section 'optimm'" in msg and "Did you mean 'optim'?" in msg
    for section in ("data", "optim", "sched", "train", "model"):
        assert section in msg


def test_key_below_a_value_is_an_error():
    msg = _error(["train.epochs.x=1"])
    assert "train.epochs.x" in msg and "'epochs'" in msg


def test_set_without_equals():
    assert "key=value" in _error(["train.epochs"])


def test_unknown_model_option_suggests():
    msg = _error(["model.hiden=[8]"])
    assert "'hiden'" in msg and "Did you mean 'hidden'?" in msg and "dropout" in msg


def test_unknown_model_name_suggests():
    msg = _error(["model.name=convnett"])
    assert "'convnett'" in msg and "Did you mean 'convnet'?" in msg


def test_unknown_recipe_suggests():
    msg = _error([], recipe="digts-mlp")
    assert "Unknown recipe 'digts-mlp'" in msg and "Did you mean 'digits-mlp'?" in msg
    for name in RECIPES:
        assert name in msg


@pytest.mark.parametrize("override,field,expected", [
    ("train.epochs=abc", "train.epochs", "int"),
    ("train.epochs=2.5", "train.epochs", "int"),
    ("train.epochs=true", "train.epochs", "int"),
    ("optim.lr=fast", "optim.lr", "float"),
    ("data.normalize=1", "data.normalize", "bool"),
    ("data.name=3", "data.name", "str"),
    ("model.hidden=5", "model.hidden", "a list"),
    ("model.hidden=[8, 'x']", "model.hidden[1]", "int"),
    ("model.dropout=high", "model.dropout", "float"),
])
def test_wrong_type_names_field_and_expected_type(override, field, expected):
    msg = _error([override])
    assert f"{field} = " in msg and "wrong type" in msg and f"expected {expected}" in msg


@pytest.mark.parametrize("override,field", [
    ("data.val_split=1.5", "data.val_split"),
    ("data.val_split=-0.1", "data.val_split"),
    ("data.test_split=1", "data.test_split"),
    ("train.epochs=0", "train.epochs"),
    ("train.batch_size=-1", "train.batch_size"),
    ("optim.lr=0", "optim.lr"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("train.monitor=acc", "train.monitor"),
])
def test_out_of_range_values_name_the_field(override, field):
    msg = _error([override])
    assert field in msg and override.split("=")[1].split(".")[0].strip("[") in msg


@pytest.mark.parametrize("override,kind,suggestion", [
    ("optim.name=adm", "optimizer", "adam"),
    ("sched.name=cosin", "schedule", "cosine"),
    ("train.precision=bf15", "precision", "bf16"),
])
def test_unknown_choice_suggests(override, kind, suggestion):
    msg = _error([override])
    assert f"Unknown {kind}" in msg and f"Did you mean '{suggestion}'?" in msg


def test_recipe_file_with_unknown_key_names_section(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('[model]\nname = "mlp"\n[train]\nepoch = 2\n')
    with pytest.raises(UserError, match=r"'train\.epoch'.*Did you mean 'epochs'"):
        load_config(str(path))


def test_model_section_needs_a_name(tmp_path):
    path = tmp_path / "noname.toml"
    path.write_text("[model]\nhidden = [8]\n")
    with pytest.raises(UserError, match=r"\[model\] section needs a `name`"):
        load_config(str(path))


def test_every_field_has_help():
    lines = help_lines()
    n = sum(len(fields(c)) for c in all_sections().values())
    assert len(lines) == n
    for section, cls in all_sections().items():
        for f in fields(cls):
            assert f.metadata.get("help"), f"{section}.{f.name} has no help text"
    assert any(line.startswith("optim.lr (float | str, default 0.001)") for line in lines)  # str: "auto"


def test_defaults_are_finite_and_valid():
    cfg = RunConfig()
    assert cfg.model["name"] == "mlp" and cfg.train.epochs >= 1
    assert all(math.isfinite(v) for v in (cfg.optim.lr, cfg.data.val_split, cfg.sched.gamma))
