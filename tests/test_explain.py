"""deepstep explain: Captum attributions of image classifiers and their two honesty checks
(plugins/explain.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepstep.config import load_config
from deepstep.engine.fit import fit
from deepstep.engine.run import Run
from deepstep.plugins.explain import (
    METHODS,
    RHO_THRESHOLD,
    attribute,
    explain,
    random_model,
    randomization_check,
)


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("explain") / "cnn"
    fit(load_config("digits-cnn", ["train.epochs=4", "train.threads=1"]), run_dir=path, verbose=0)
    return path


@pytest.fixture(scope="module")
def other_runs(tmp_path_factory):
    """An MLP classifier (no conv target layer) and an autoencoder (not a classifier), 1 epoch each."""
    root = tmp_path_factory.mktemp("explain-others")
    for recipe in ("digits-mlp", "digits-ae"):
        fit(load_config(recipe, ["train.epochs=1", "train.threads=1"]), run_dir=root / recipe, verbose=0)
    return root


@pytest.mark.parametrize("method", METHODS)
def test_every_method_via_the_cli(run_cli, cnn_run, tmp_path, method):
    out = tmp_path / "ex"
    r = run_cli("explain", cnn_run, "--method", method, "--out", out, "--n", "3")
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "explain.json").read_text())
    e = doc["methods"][method]
    assert len(e["inputs"]) == 3 and e["seconds"] >= 0
    for rec in e["inputs"]:
        assert (out / rec["png"]).is_file() and str(out / rec["png"]) in r.stdout
        assert rec["predicted"] in doc["classes"] and rec["true"] in doc["classes"]
    assert set(e["randomization"]) >= {"rho", "passed", "threshold"} and e["randomization"]["threshold"] == RHO_THRESHOLD
    d = e["deletion"]
    assert len(d["curve"]) == len(d["fractions"]) == 6 and d["passed"] == (d["area"] < d["random_area"])
    assert "model randomization: Spearman rho" in r.stdout and "deletion: area" in r.stdout
    z = np.load(out / f"explain-{method}.npz")
    assert z["x"].shape == (3, 1, 8, 8) and z["attributions"].shape == z["x"].shape
    assert np.isfinite(z["attributions"]).all()


def test_saliency_is_the_absolute_input_gradient(cnn_run, tmp_path):
    run = Run.open(cnn_run)
    e = explain(run, "saliency", out=tmp_path, n=5, checks=False)
    z = np.load(tmp_path / "explain-saliency.npz")
    x = torch.tensor(z["x"], requires_grad=True)
    model = run.model().eval()
    out = model(x)
    out[torch.arange(len(x)), torch.as_tensor(z["target"])].sum().backward()
    np.testing.assert_allclose(z["attributions"], x.grad.abs().numpy(), rtol=1e-5, atol=1e-7)
    assert (z["target"] == z["predicted"]).all() and e["target"] == "predicted class"


def test_integrated_gradients_is_complete_on_images(cnn_run, tmp_path):
    """The attributions add up to logit(input) - logit(baseline zeros), up to the integral's error."""
    run = Run.open(cnn_run)
    e = explain(run, "integrated-gradients", out=tmp_path, n=6, checks=False)
    z = np.load(tmp_path / "explain-integrated-gradients.npz")
    model, x, t = run.model().eval(), torch.as_tensor(z["x"]), torch.as_tensor(z["target"])
    with torch.no_grad():
        diff = (model(x) - model(torch.zeros_like(x)))[torch.arange(6), t].numpy()
    np.testing.assert_allclose(z["attributions"].reshape(6, -1).sum(1), diff, rtol=0.03, atol=0.05)
    assert e["completeness"]["max_relative_gap"] < 0.03


def test_the_randomization_check_can_fail(cnn_run):
    """A 'method' that ignores the model (the input itself) correlates perfectly across models; saliency
    of the trained model must change more when its weights are re-initialized."""
    run = Run.open(cnn_run)
    x = run.rebuild().data["test"].x[:8].float()
    model, fresh = run.model().eval(), random_model(run)
    t = model(x).argmax(1)
    saliency = randomization_check(lambda m, xx, tt: attribute(m, xx, tt, "saliency"), model, fresh, x, t)
    broken = randomization_check(lambda m, xx, tt: xx.abs(), model, fresh, x, t)
    assert broken["rho"] > 0.99 and not broken["passed"]
    assert saliency["rho"] < broken["rho"]
    # the re-initialized model really differs from the trained one
    assert not torch.allclose(model(x), fresh(x))


def test_inputs_and_target(run_cli, cnn_run, tmp_path):
    run = Run.open(cnn_run)
    raw = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "two.npy", raw)
    r = run_cli("explain", cnn_run, "two.npy", "--method", "occlusion", "--target", "3", "--out", "ex")
    assert r.returncode == 0, r.stderr
    e = json.loads((tmp_path / "ex" / "explain.json").read_text())["methods"]["occlusion"]
    assert [i["input"] for i in e["inputs"]] == ["two.npy[0]", "two.npy[1]"]
    assert all(i["target"] == "3" and i["true"] is None for i in e["inputs"])
    z = np.load(tmp_path / "ex" / "explain-occlusion.npz")
    np.testing.assert_allclose(z["x"], run.preprocess(raw).numpy(), rtol=1e-6)
    assert (z["target"] == 3).all()


@pytest.mark.parametrize("args, message", [
    (["--method", "lime"], "Unknown method 'lime'"),
    (["--method", "saliency", "--target", "cat"], "is not one of this run's classes"),
    (["--method", "saliency", "--n", "0"], "--n 0"),
])
def test_bad_arguments_are_user_errors(run_cli, cnn_run, args, message):
    r = run_cli("explain", cnn_run, *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_runs_that_cannot_be_explained(run_cli, other_runs):
    r = run_cli("explain", other_runs / "digits-ae")
    assert r.returncode == 2 and "does not classify" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("explain", other_runs / "digits-mlp", "--method", "grad-cam")
    assert r.returncode == 2 and "grad-cam needs a conv model" in r.stderr and "saliency" in r.stderr
    r = run_cli("explain", other_runs / "digits-mlp", "--method", "all", "--n", "2", "--out", "ex")
    assert r.returncode == 0, r.stderr
    assert "grad-cam" not in r.stdout and "integrated-gradients" in r.stdout


def test_the_report_shows_the_checks(cnn_run, tmp_path):
    from deepstep.plugins.explain import report_section
    from deepstep.plugins.report import write_report

    run = Run.open(cnn_run)
    explain(run, "saliency", n=2)  # the default folder RUN/explain
    html = write_report(cnn_run, out=tmp_path / "r.html").read_text()
    assert 'id="explain"' in html and "saliency: test[0]" in html
    fake = tmp_path / "fake" / "explain"
    fake.mkdir(parents=True)
    (fake / "explain.json").write_text(json.dumps({"methods": {"occlusion": {
        "randomization": {"rho": 0.9, "passed": False}, "deletion": {"area": 0.2, "random_area": 0.6, "passed": True},
        "inputs": []}}}))
    section = report_section(tmp_path / "fake")
    assert "failed its sanity check" in section and "<tr class=hl>" in section
    assert report_section(tmp_path) == ""


@pytest.mark.parametrize("recipe", ["fortunes-lstm", "fortunes-transformer"])
def test_text_runs_token_attributions(run_cli, tmp_path, recipe):
    path = tmp_path / "t"
    fit(load_config(recipe, ["train.epochs=1", "train.threads=1"]), run_dir=path, verbose=0)
    run = Run.open(path)
    e = explain(run, None, n=3)
    assert e["method"] == "integrated-gradients" and len(e["inputs"]) == 3
    assert (path / "explain" / "explain.html").is_file() and "randomization" in e and "deletion" in e
    z = np.load(path / "explain" / "explain-integrated-gradients.npz")
    ids, attr = torch.as_tensor(z["x"]), torch.as_tensor(z["attributions"])
    assert attr.shape == ids.shape and (attr[ids == 0] == 0).all()
    # completeness of integrated gradients: the attributions add up to logit(input) - logit(zero embedding)
    model = run.model().eval()
    t = torch.as_tensor(z["target"])
    with torch.no_grad():
        full = model(ids)[torch.arange(3), t]
        h = model.embed.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        base = model(ids)[torch.arange(3), t]
        h.remove()
    # (an LSTM's max readout makes the 32-step integral inexact for some texts: the gap is reported)
    c = e["completeness"]
    np.testing.assert_allclose(c["logit_difference"], (full - base).numpy(), atol=2e-3)
    np.testing.assert_allclose(c["gap"], np.abs(attr.sum(1).numpy() - (full - base).numpy()), atol=2e-3)
    r = run_cli("explain", path, "--method", "occlusion")
    assert r.returncode == 2 and "integrated-gradients" in r.stderr and "not 'occlusion'" in r.stderr
    # the explanations plug-in explained 4 test texts at the end of training, for the report
    auto = json.loads((path / "explain" / "explain.json").read_text())["methods"]
    assert "integrated-gradients" in auto and 'class="tokens"' in (path / "report.html").read_text()
    r = run_cli("explain", path, "--method", "attention")
    if recipe == "fortunes-lstm":
        assert r.returncode == 2 and "does not return them" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    e = json.loads((path / "explain" / "explain.json").read_text())["methods"]["attention"]
    assert e["randomization"]["passed"] in (True, False) and len(e["deletion"]["curve"]) == 6
    for rec in e["inputs"]:
        assert (path / "explain" / rec["png"]).is_file() and len(rec["tokens"]) == len(rec["scores"])
    z = np.load(path / "explain" / "explain-attention.npz")
    ids, roll = z["x"], z["attributions"]
    # attention rollout: each text's scores are a distribution over its real tokens
    assert (roll >= 0).all() and (roll[ids == 0] == 0).all()
    np.testing.assert_allclose(roll.sum(1), 1.0, atol=1e-4)


def test_every_classification_run_explains_a_few_examples_unless_skipped(tmp_path):
    """The default plug-in `explanations`: Grad-CAM on 4 test images of a conv run, with both checks,
    in RUN/explain and in report.html; plugins.skip leaves it out."""
    fit(load_config("digits-cnn", ["train.epochs=1", "train.threads=1", "data.limit=400"]),
        run_dir=tmp_path / "a", verbose=0)
    e = json.loads((tmp_path / "a" / "explain" / "explain.json").read_text())["methods"]["grad-cam"]
    assert len(e["inputs"]) == 4 and {"randomization", "deletion"} <= set(e)
    html = (tmp_path / "a" / "report.html").read_text()
    assert 'id="explain"' in html and "grad-cam: test[0]" in html
    fit(load_config("digits-cnn", ["train.epochs=1", "train.threads=1", "data.limit=400",
                                   'plugins.skip=["explanations"]']), run_dir=tmp_path / "b", verbose=0)
    assert not (tmp_path / "b" / "explain").exists() and (tmp_path / "b" / "report.html").is_file()


def test_a_live_run_is_explained_without_moving_its_generator(tmp_path):
    """The randomization check's fresh weights come from a forked generator: a live run's RNG
    state is the same after explaining as before."""
    run = fit(load_config("digits-mlp", ["train.epochs=1", "train.threads=1", 'plugins.skip=["explanations"]']),
              run_dir=tmp_path / "r", verbose=0)
    before = torch.random.get_rng_state()
    explain(run, "saliency", n=2)
    assert torch.equal(before, torch.random.get_rng_state())
