"""Transfer learning: discriminative (per-stage) learning rates, feature extraction on cached
embeddings, pretraining from a deepstep recipe (cached), the scratch baseline, and resuming a run
whose pretrained file is gone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import deepstep
from deepstep.config import OptimConfig, SchedConfig, load_config
from deepstep.engine.optim import Optimization, stage_groups
from deepstep.errors import UserError

# a quick frozen-backbone setup on 8x8 digits (resnet18 reads 8x8 down to a 1x1 map)
FROZEN = ["model.name=resnet18", "model.freeze=backbone", "data.limit=400", "data.test_split=0.5",
          "train.batch_size=32", "train.epochs=6", "optim.lr=3e-3"]


def test_stage_groups_have_decayed_rates_and_skip_frozen_stages():
    model = deepstep.create_model("resnet18", (1, 8, 8), 10)
    groups = stage_groups(model, OptimConfig(lr=1e-2, stage_lr_decay=0.5))
    assert [g["name"] for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-2 * 0.5**k for k in (5, 4, 3, 2, 1, 0)])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(stage_groups(model, OptimConfig(lr=1e-2))) == 1  # decay 1: one group, as before

    model = deepstep.create_model("resnet18", (1, 8, 8), 10, freeze="layer2")
    opt = Optimization(stage_groups(model, OptimConfig(lr=1e-2, stage_lr_decay=0.5)), OptimConfig(lr=1e-2),
                       SchedConfig(), steps_per_epoch=1, epochs=1)
    got = {g["name"]: g["lr"] for g in opt.optimizer.param_groups}
    assert got == pytest.approx({"layer3": 2.5e-3, "layer4": 5e-3, "head": 1e-2})  # frozen: no group
    in_groups = {id(p) for g in opt.optimizer.param_groups for p in g["params"]}
    frozen = [p for n, p in model.named_parameters() if n.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")]
    assert frozen and not any(id(p) in in_groups for p in frozen)
    assert opt.lr == pytest.approx(1e-2)  # the logged rate is the head's

    mlp = deepstep.create_model("mlp", (1, 8, 8), 10)  # no stages: one group at optim.lr
    assert [g["lr"] for g in stage_groups(mlp, OptimConfig(lr=1e-2, stage_lr_decay=0.5))] == [1e-2]
    with pytest.raises(UserError, match=r"optim\.stage_lr_decay"):
        OptimConfig(stage_lr_decay=0.0)


@pytest.mark.parametrize("sched", ["cosine", "onecycle"])
def test_schedules_scale_every_group_and_round_trip(sched):
    def make():
        torch.manual_seed(0)
        model = deepstep.create_model("resnet18", (1, 8, 8), 3, freeze="layer3")
        cfg = OptimConfig(lr=1e-2, stage_lr_decay=0.1)
        return model, Optimization(stage_groups(model, cfg), cfg, SchedConfig(name=sched, warmup_epochs=1),
                                   steps_per_epoch=4, epochs=3)

    model, opt = make()
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4) % 3
    for _ in range(5):
        opt.step(torch.nn.functional.cross_entropy(model(x), y))
        lrs = [g["lr"] for g in opt.optimizer.param_groups]
        assert lrs[0] == pytest.approx(lrs[1] * 0.1)  # layer4 keeps a tenth of the head's rate
    assert opt.lr == pytest.approx(lrs[1]) and opt.lr != pytest.approx(1e-2)
    _, again = make()
    again.load_state_dict(opt.state_dict())  # checkpoint/resume
    assert [g["lr"] for g in again.optimizer.param_groups] == lrs
    assert again.per_step.state_dict()["last_epoch"] == opt.per_step.state_dict()["last_epoch"]


def test_cached_features_train_the_same_head_faster(tmp_path):
    from deepstep.run import load_run, train

    plain = train(load_config("digits-cnn", FROZEN), tmp_path / "plain", verbose=0)
    cached = train(load_config("digits-cnn", [*FROZEN, "train.cache_features=true"]), tmp_path / "cached", verbose=0)
    a, b = load_run(plain.run_dir).model(), load_run(cached.run_dir).model()
    for k, v in a.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(b.state_dict()[k], v), k  # the backbone is untouched in both
    torch.testing.assert_close(b.fc.weight, a.fc.weight, rtol=1e-3, atol=1e-4)
    assert cached["test/acc"] == pytest.approx(plain["test/acc"], abs=0.01)
    assert cached["train_seconds"] < plain["train_seconds"]
    # the saved run holds the whole model: it classifies raw images
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    assert load_run(cached.run_dir).predict(x).shape == (3, 10)


def test_cache_features_errors():
    from deepstep.run import train

    with pytest.raises(UserError, match=r"frozen backbone.*layer4.*model\.freeze = 'backbone'"):
        train(load_config("digits-cnn", [*FROZEN, "model.freeze=layer3", "train.cache_features=true"]), verbose=0)
    with pytest.raises(UserError, match=r"data\.augment = 'shift'"):
        train(load_config("digits-cnn", [*FROZEN, "data.augment=shift", "train.cache_features=true"]), verbose=0)
    with pytest.raises(UserError, match=r"model 'convnet' does not split"):
        train(load_config("digits-cnn", ["train.cache_features=true"]), verbose=0)


def test_train_limit_keeps_the_test_part():
    from deepstep.engine.runtime import Runtime
    from deepstep.registry import TASKS

    def task(*over):
        cfg = load_config("digits-mlp", ["data.val_split=0", *over])
        return TASKS.get("classify")(cfg, Runtime(device="cpu"))

    full, small = task(), task("data.train_limit=100")
    assert len(small.data["train"]) == 100 and len(full.data["train"]) == 898
    assert torch.equal(small.data["test"].y, full.data["test"].y)
    y = full.data["train"].y
    counts = torch.bincount(small.data["train"].y, minlength=10)
    assert counts.sum() == 100 and counts.min() >= 9 and counts.max() <= 11, counts  # stratified
    for c in range(10):  # each class's first examples, in their order
        assert torch.equal(small.data["train"].y[small.data["train"].y == c], y[y == c][: counts[c]])
    from deepstep.data.arrays import limit_stratified

    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    keep = limit_stratified(y, 10)
    assert np.bincount(y[keep]).tolist() == [6, 3, 1] and (np.diff(keep) > 0).all()
    assert np.bincount(y[limit_stratified(y, 5)]).tolist() == [3, 2]  # a tie (1.5 vs 0.5 remainders .5): class order
    assert len(limit_stratified(y, 500)) == 100
    with pytest.raises(UserError, match=r"data\.train_limit"):
        load_config("digits-mlp", ["data.train_limit=-1"])


def test_new_head_drops_a_fitting_head(tmp_path):
    src = deepstep.create_model("resnet18", (1, 8, 8), 10)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    kept = deepstep.create_model("resnet18", (1, 8, 8), 10, pretrained=str(tmp_path / "w.pth"))
    fresh = deepstep.create_model("resnet18", (1, 8, 8), 10, pretrained=str(tmp_path / "w.pth"), new_head=True)
    assert torch.equal(kept.fc.weight, src.fc.weight) and not torch.equal(fresh.fc.weight, src.fc.weight)
    assert torch.equal(fresh.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_pretrained_upto_keeps_later_stages_fresh(tmp_path):
    src = deepstep.create_model("resnet18", (1, 8, 8), 10)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    torch.manual_seed(1)
    fresh = deepstep.create_model("resnet18", (1, 8, 8), 10)
    torch.manual_seed(1)  # the same fresh initialization, then stem..layer2 from the file
    part = deepstep.create_model("resnet18", (1, 8, 8), 10, pretrained=str(tmp_path / "w.pth"),
                                 pretrained_upto="layer2")
    for k, v in part.state_dict().items():
        origin = src if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2") else fresh
        assert torch.equal(v, origin.state_dict()[k]), k
    assert not torch.equal(part.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    stem = deepstep.create_model("resnet18", (1, 8, 8), 10, pretrained=str(tmp_path / "w.pth"), pretrained_upto="stem")
    assert torch.equal(stem.conv1.weight, src.conv1.weight) and not torch.equal(stem.layer1[0].conv1.weight,
                                                                                src.layer1[0].conv1.weight)
    with pytest.raises(UserError, match="pretrained_upto='fc' is not valid"):
        deepstep.create_model("resnet18", (1, 8, 8), 10, pretrained=str(tmp_path / "w.pth"), pretrained_upto="fc")
    with pytest.raises(UserError, match="pretrained_upto='fc' is not valid"):  # also without weights
        deepstep.create_model("resnet18", (1, 8, 8), 10, pretrained_upto="fc")


TINY = ["--set", 'transfer.pretrain_set=["data.name=digits", "train.epochs=1", "data.limit=300"]',
        "--set", "train.epochs=2", "--set", "data.train_limit=60", "--set", "data.test_split=0.2"]


def test_transfer_recipe_end_to_end_with_cached_pretraining(run_cli, tmp_path, monkeypatch):
    """The recipe as a user runs it, with a tiny pretraining on digits in a temporary cache."""
    monkeypatch.setenv("DEEPSTEP_CACHE", str(tmp_path / "cache"))
    r = run_cli("train", "fashion-to-digits-transfer", *TINY, "--run-dir", "t1", "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "training the pretrained backbone 'fashion-resnet18' once (first use)" in r.stdout
    s = json.loads((tmp_path / "t1" / "summary.json").read_text())
    assert 0 <= s["test/acc"] <= 1 and 0 <= s["baseline/scratch_acc"] <= 1
    e = s["expect"]["test/acc"]
    assert e["target"] == "baseline/scratch_acc" and e["target_value"] == s["baseline/scratch_acc"]
    assert json.loads((tmp_path / "t1" / "meta.json").read_text())["sizes"]["train"] == 60
    (cached,) = [p for p in (tmp_path / "cache" / "pretrained").iterdir() if p.is_dir()]  # and its .lock
    assert cached.name.startswith("fashion-resnet18-") and (cached / "model.safetensors").is_file()

    # the second run reuses the cached backbone; here as a feature extractor without the baseline
    r = run_cli("train", "fashion-to-digits-transfer", *TINY, "--set", "model.freeze=backbone",
                "--set", "train.cache_features=true", "--set", "transfer.scratch_baseline=false",
                "--run-dir", "t2", "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "using the cached run of the pretrained backbone" in r.stdout and "once (first use)" not in r.stdout
    assert "baseline/scratch_acc" not in json.loads((tmp_path / "t2" / "summary.json").read_text())

    from sklearn.datasets import load_digits

    np.save(tmp_path / "x.npy", (load_digits().images[:2] / 16.0).astype(np.float32)[:, None])
    for run in ("t1", "t2"):  # raw 8x8 images through the whole saved model
        r = run_cli("predict", run, "x.npy")
        assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 2, r.stderr


def test_missing_or_mismatched_pretrained_file_exits_2(run_cli, tmp_path):
    base = ["train", "fashion-to-digits-transfer", "--set", "transfer.pretrain=", "--set", "train.epochs=1"]
    r = run_cli(*base, "--set", f"model.pretrained={tmp_path / 'gone.pth'}")
    assert r.returncode == 2, r.stderr
    assert "no weights file at" in r.stderr and "gone.pth" in r.stderr and "Traceback" not in r.stderr
    torch.save(deepstep.create_model("resnet34", (1, 8, 8), 10).state_dict(), tmp_path / "r34.pth")
    r = run_cli(*base, "--set", f"model.pretrained={tmp_path / 'r34.pth'}")
    assert r.returncode == 2 and "do not fit the model" in r.stderr and "r34.pth" in r.stderr, r.stderr
    r = run_cli(*base, "--set", f"model.pretrained={tmp_path / 'r34.pth'}", "--set", "transfer.pretrain=fashion-resnet18")
    assert r.returncode == 2 and "not both" in r.stderr, r.stderr


def test_resume_needs_no_pretrained_file(tmp_path, monkeypatch):
    """The checkpoint holds every weight: a run whose pretrained file is gone resumes exactly; killed
    before its first checkpoint, it needs the file and says so."""
    from conftest import KillAt, Killed
    from deepstep import run as run_mod

    torch.manual_seed(3)
    torch.save(deepstep.create_model("resnet18", (1, 8, 8), 10).state_dict(), tmp_path / "w.pth")
    over = ["model.name=resnet18", f"model.pretrained={tmp_path / 'w.pth'}", "model.freeze=layer2",
            "optim.stage_lr_decay=0.5", "data.limit=300", "train.epochs=2", "train.batch_size=64"]
    cfg = load_config("digits-cnn", over)
    ref = run_mod.train(cfg, tmp_path / "ref", verbose=0)
    for name, step in (("cut", 5), ("early", 1)):  # 3 steps per epoch: killed in epoch 2 / epoch 1
        with pytest.raises(Killed):
            run_mod.train(cfg, tmp_path / name, verbose=0, plugins=[KillAt(step)])
    (tmp_path / "w.pth").unlink()
    resumed = run_mod.resume(tmp_path / "cut", verbose=0)
    assert resumed["test/acc"] == ref["test/acc"] and resumed["test/loss"] == ref["test/loss"]
    with pytest.raises(UserError, match=r"model\.pretrained: no weights file at .*w\.pth"):
        run_mod.resume(tmp_path / "early", verbose=0)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["epochs"] == 2


def test_a_second_process_waits_for_the_pretraining_then_reuses_it(tmp_path, monkeypatch, capsys):
    """The cache lock: while another process holds it (pretraining), pretrained_run waits, then
    finds the finished run instead of training it a second time."""
    import subprocess
    import sys

    from deepstep.tasks.transfer import cached_path, pretrained_run

    monkeypatch.setenv("DEEPSTEP_CACHE", str(tmp_path))
    path = cached_path("fashion-resnet18", ["train.epochs=1"])
    path.parent.mkdir(parents=True)
    holder = subprocess.Popen(  # "pretrains": holds the lock, writes the run's files, releases
        [sys.executable, "-c", "import sys, time, pathlib; from filelock import FileLock\n"
         "p = pathlib.Path(sys.argv[1]); lock = FileLock(str(p) + '.lock'); lock.acquire()\n"
         "print('locked', flush=True); time.sleep(1.5); p.mkdir()\n"
         "(p / 'summary.json').write_text('{}'); (p / 'model.safetensors').write_bytes(b'')\n"
         "lock.release()", str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert pretrained_run("fashion-resnet18", ["train.epochs=1"]) == path
    holder.wait(timeout=30)
    out = capsys.readouterr().out
    assert "another process is training" in out and "using the cached run" in out
    assert "once (first use)" not in out
