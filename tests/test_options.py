"""Options belong to their owner: task-specific sections register with their tasks, a run's config
holds only the sections its task uses, a section of another task is a clear error where a user
typed it and ignored where an older run directory's config.toml is read."""

from __future__ import annotations

import dataclasses
import subprocess
import tomllib

import pytest
import tomli_w

from deepstep.config import (
    GENERIC_SECTIONS,
    RunConfig,
    SectionError,
    all_sections,
    load_config,
    read_toml,
    sections_for,
    task_sections,
)
from deepstep.errors import UserError
from deepstep.registry import TASKS
from deepstep.tasks.rl.options import EnvConfig, RLConfig
from deepstep.tasks.transfer_options import TransferConfig

TASK_SPECIFIC = {"env", "rl", "gen", "forecast", "transfer"}


def inproc(argv, capsys) -> subprocess.CompletedProcess:
    """`deepstep.cli.main(argv)` in this process."""
    from deepstep.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc, out, err)


# --- registration ------------------------------------------------------------------------------

def test_sections_are_registered_by_their_owners_with_registered_tasks():
    sections = task_sections()
    assert set(sections) == TASK_SPECIFIC
    assert sections["rl"].tasks == sections["env"].tasks == ("dqn", "ppo")
    assert sections["gen"].tasks == ("autoencode", "gan", "vae")
    assert sections["forecast"].tasks == ("forecast",)
    assert sections["transfer"].tasks == ("classify", "regress")
    for s in sections.values():
        assert s.cls.__module__.startswith("deepstep.tasks."), f"{s.name} is not declared beside its tasks"
        for task in s.tasks:
            assert task in TASKS, f"section '{s.name}' names the unregistered task '{task}'"
    assert set(all_sections()) == set(GENERIC_SECTIONS) | TASK_SPECIFIC


@pytest.mark.parametrize("task", TASKS.names())
def test_each_task_has_the_generic_sections_and_only_its_own(task):
    own = set(sections_for(task)) - set(GENERIC_SECTIONS)
    assert own == {n for n, s in task_sections().items() if task in s.tasks}


# --- a config holds only its task's sections -------------------------------------------------

def test_classify_config_has_no_rl_section():
    cfg = load_config("digits-mlp")
    d = cfg.to_dict()
    assert "transfer" in d and not TASK_SPECIFIC - {"transfer"} & set(d)
    assert set(d) == {"task", "description", "data", "model", "optim", "sched", "train", "transfer",
                      "plugins", "card", "expect", "recipe"}
    assert not hasattr(cfg, "rl") and cfg.uses("transfer") and not cfg.uses("rl") and cfg.uses("train")
    with pytest.raises(SectionError) as e:
        cfg.rl  # noqa: B018
    assert isinstance(e.value, AttributeError) and isinstance(e.value, UserError)
    assert "Section 'rl' is for tasks dqn, ppo; this run's task is 'classify'" in str(e.value)


def test_sections_read_as_attributes_and_replace_keeps_working():
    cfg = load_config("cartpole-ppo", ["rl.gamma=0.9"])
    assert cfg.rl.gamma == 0.9 and cfg.env.id == "CartPole-v1"
    again = dataclasses.replace(cfg, model={**cfg.model})
    assert again == cfg and again.rl.gamma == 0.9
    other = dataclasses.replace(cfg, rl=RLConfig(gamma=0.5))
    assert other.rl.gamma == 0.5 and cfg.rl.gamma == 0.9 and other.env == cfg.env
    built = RunConfig(task="ppo", rl=RLConfig(gamma=0.5), model={"name": "mlp"})
    assert built.rl.gamma == 0.5 and built.env == EnvConfig()  # the task's sections not given: defaults
    with pytest.raises(SectionError, match="Section 'rl' is for tasks dqn, ppo; this run's task is 'classify'"):
        RunConfig(task="classify", rl=RLConfig())
    with pytest.raises(SectionError, match="Section 'transfer' is for tasks classify, regress"):
        dataclasses.replace(cfg, transfer=TransferConfig())


# --- strict where a user types ---------------------------------------------------------------

def test_set_of_another_tasks_section_is_a_clear_error():
    with pytest.raises(UserError) as e:
        load_config("digits-mlp", ["gen.beta=2"])
    msg = str(e.value)
    assert "Section 'gen' is for tasks autoencode, gan, vae; this run's task is 'classify'" in msg
    assert "--set gen.beta=2" in msg and "deepstep options --task classify" in msg


def test_recipe_section_of_another_task_names_the_recipe(tmp_path):
    path = tmp_path / "mixed.toml"
    path.write_text('task = "classify"\n[model]\nname = "linear"\n[rl]\ngamma = 0.9\n')
    with pytest.raises(UserError, match=r"Section 'rl' is for tasks dqn, ppo; this run's task is "
                                        r"'classify' \(recipe 'mixed'\)"):
        load_config(str(path))
    # a --set task= that leaves the recipe's sections behind
    with pytest.raises(UserError, match=r"Section 'gen' is for tasks autoencode, gan, vae; this run's task "
                                        r"is 'classify' \(recipe 'digits-gan'\)"):
        load_config("digits-gan", ["task=classify"])


def test_unknown_names_keep_their_errors():
    with pytest.raises(UserError, match=r"Unknown section 'gem'.*Did you mean 'gen'\?"):
        load_config("digits-mlp", ["gem.beta=2"])
    with pytest.raises(UserError, match=r"Unknown task 'clasify'.*Did you mean 'classify'\?"):
        load_config("digits-mlp", ["task=clasify"])
    with pytest.raises(UserError, match=r"Unknown key 'gamma'.*Did you mean 'sched.gamma' or 'rl.gamma'\?"):
        load_config("cartpole-ppo", ["gamma=0.9"])


def test_ppo_dry_run_shows_env_and_rl_only(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = inproc(["train", "cartpole-ppo", "--set", "rl.gamma=0.9", "--dry-run"], capsys)
    assert r.returncode == 0, r.stderr
    d = tomllib.loads(r.stdout)
    assert d["rl"]["gamma"] == 0.9 and d["env"]["id"] == "CartPole-v1"
    for section in ("gen", "forecast", "transfer"):
        assert section not in d
    assert not any(tmp_path.iterdir())


# --- lenient where an older file is read -----------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from deepstep.engine.fit import fit

    cfg = load_config("digits-mlp", ["train.epochs=1", "data.limit=300", "train.device=cpu", "train.threads=1"])
    path = tmp_path_factory.mktemp("options") / "run"
    fit(cfg, run_dir=path, verbose=0)
    return cfg, path


def test_old_config_toml_with_every_section_still_opens(finished_run):
    from deepstep.engine.run import Run

    cfg, path = finished_run
    written = read_toml(path / "config.toml")
    assert "rl" not in written and "transfer" in written
    # as the previous version wrote it: every section, whatever the task
    old = {**written, **{name: dataclasses.asdict(cls()) for name, cls in all_sections().items()
                         if name not in written}}
    (path / "config.toml").write_text(tomli_w.dumps(old))
    try:
        run = Run.open(path)
        assert run.cfg == cfg and not hasattr(run.cfg, "gen")
        assert set(run.cfg.to_dict()) == set(written)
        assert "test/acc" in run.summary and run.model() is not None
        with pytest.raises(UserError, match="Section '(env|rl|forecast|gen)' is for"):
            RunConfig.from_dict(old, where="config.toml")  # strict: what a user wrote
    finally:
        (path / "config.toml").write_text(tomli_w.dumps(written))


# --- deepstep options --------------------------------------------------------------------------

def test_options_for_a_task_lists_its_sections_only(capsys):
    r = inproc(["options", "--task", "ppo"], capsys)
    assert r.returncode == 0, r.stderr
    assert "rl.gamma" in r.stdout and "env.id" in r.stdout and "optim.lr" in r.stdout
    for key in ("gen.beta", "forecast.window", "transfer.pretrain"):
        assert key not in r.stdout


def test_options_without_task_heads_each_task_section(capsys):
    r = inproc(["options"], capsys)
    assert r.returncode == 0, r.stderr
    for key in ("optim.lr", "rl.gamma", "gen.beta", "forecast.window", "transfer.pretrain"):
        assert key in r.stdout
    assert "[gen]: tasks autoencode, gan, vae" in r.stdout and "[forecast]: task forecast" in r.stdout
    assert "[rl]: tasks dqn, ppo" in r.stdout


def test_options_of_an_unknown_task_is_a_clear_error(capsys):
    r = inproc(["options", "--task", "ppoo"], capsys)
    assert r.returncode == 2 and "Unknown task 'ppoo'" in r.stderr and "Did you mean 'ppo'?" in r.stderr
