"""The tensorboard plug-in, read back with TensorBoard's own event reader: every record's scalars,
the hyperparameters, the pictures, and the same events after a kill and resume as without one."""

from __future__ import annotations

import pytest

from conftest import KillAt, Killed
from deepstep.config import load_config
from deepstep.engine.fit import fit, resume

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402


def events(run_dir) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def scalars(ea: EventAccumulator) -> dict:
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def raw_steps(run_dir, tag: str) -> list[int]:
    """The steps of `tag` in the event files as written, before TensorBoard applies purge_step."""
    steps = []
    for f in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        for e in EventFileLoader(str(f)).Load():
            steps += [e.step for v in e.summary.value if v.tag == tag]
    return steps


def cfg(*more):
    return load_config("digits-mlp", ["train.epochs=4", "train.threads=1", "train.log_every=5",
                                      "plugins.use=['tensorboard']", *more])


def test_scalars_hparams_and_the_confusion_matrix_read_back(tmp_path):
    run = fit(cfg(), run_dir=tmp_path / "run", verbose=0)
    ea = events(tmp_path / "run")
    got = scalars(ea)
    records = run.metrics()
    epochs = [r for r in records if "epoch" in r]
    steps = [r for r in records if "epoch" not in r]
    assert steps, "train.log_every=5 gives step records"
    # every number of every record, at the record's global step, and nothing else
    assert got["val/acc"] == [(r["step"], pytest.approx(r["val/acc"], abs=1e-7)) for r in epochs]
    assert got["steps/train/loss"] == [(r["step"], pytest.approx(r["train/loss"], abs=1e-6)) for r in steps]
    assert got["epoch"] == [(r["step"], float(r["epoch"])) for r in epochs]
    want_tags = {k for r in epochs for k in r if k not in ("step", "epoch")} | {f"steps/{k}" for r in steps for k in r
                                                                               if k != "step"}
    assert want_tags <= set(got), want_tags - set(got)
    assert got["test/acc"] == [(epochs[-1]["step"], pytest.approx(run.summary["test/acc"], abs=1e-7))]
    # the hyperparameters, with the final metrics
    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optim.lr"].number_value == pytest.approx(run.cfg.optim.lr)
    assert start.hparams["model.name"].string_value == "mlp"
    assert start.hparams["model.hidden"].string_value == "[256, 128]"
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "test/acc" in {m.name.tag for m in exp.metric_infos}
    # the confusion matrix as an image
    (image,) = ea.Images("classes/confusion")
    assert image.step == epochs[-1]["step"] and image.width > 200 and image.encoded_image_string[:4] == b"\x89PNG"


def test_a_resumed_run_reads_back_as_an_uninterrupted_one(tmp_path):
    c = cfg("train.checkpoint_every=2")
    spe = fit(c, run_dir=tmp_path / "ref", verbose=0).task.steps_per_epoch
    with pytest.raises(Killed):  # in epoch 4: epoch 3's record was written after the last checkpoint (epoch 2)
        fit(c, run_dir=tmp_path / "cut", verbose=0, plugins=[KillAt(3 * spe + spe // 2)])
    resume(tmp_path / "cut", verbose=0)
    ref, cut = scalars(events(tmp_path / "ref")), scalars(events(tmp_path / "cut"))
    assert cut.keys() == ref.keys()
    for tag in ref:
        assert cut[tag] == ref[tag], tag  # same steps, same values: nothing twice
    # as written, the files do hold epoch 3 twice: purge_step is what hides the killed run's copy
    assert raw_steps(tmp_path / "cut", "val/acc").count(3 * spe) == 2
    assert raw_steps(tmp_path / "ref", "val/acc").count(3 * spe) == 1


def test_a_gan_run_shows_its_sample_grids_per_epoch(tmp_path):
    c = load_config("digits-gan", ["train.epochs=2", "gen.eval_samples=0", "gen.test_samples=0", "train.threads=1",
                                     "plugins.use=['tensorboard']"])
    run = fit(c, run_dir=tmp_path / "run", verbose=0)
    ea = events(tmp_path / "run")
    steps = [r["step"] for r in run.metrics() if "epoch" in r]
    assert [i.step for i in ea.Images("samples")] == steps
    assert {"pictures/samples", "pictures/interpolation", "pictures/losses"} <= set(ea.Tags()["images"])
    assert "gan/d_loss" in ea.Tags()["scalars"]


def test_without_tensorboard_installed_the_run_stops_at_start_naming_the_install_command(tmp_path, monkeypatch):
    import sys

    from deepstep.errors import UserError

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now fails as if not installed
    with pytest.raises(UserError, match=r"pip install 'deepstep\[tensorboard\]'"):
        fit(cfg(), run_dir=tmp_path / "run", verbose=0)
    assert not (tmp_path / "run" / "model.safetensors").exists()
