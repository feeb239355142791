"""The per-class analysis (plugins/classes.py: RUN/classes.json, RUN/predictions.npz, the
class-balance warning) and the model card (plugins/model_card.py: RUN/MODEL_CARD.md), each
checked against an independent computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from deepstep.config import load_config
from deepstep.engine.fit import fit
from deepstep.engine.run import Run
from deepstep.errors import UserError
from deepstep.plugins.classes import ClassBalance, ClassReport, balance_warnings, calibration

SECTIONS = ["Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
            "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("card") / "digits-mlp"
    return fit(load_config("digits-mlp", ["train.epochs=3"]), run_dir=path, verbose=0)


def _json(run) -> dict:
    return json.loads((run.path / "classes.json").read_text())


def _front_matter(path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _sections(text: str) -> list[str]:
    return [line[3:] for line in text.splitlines() if line.startswith("## ")]


# --- classes.json and predictions.npz ---------------------------------------------------------

def test_classes_json_matches_sklearn_on_the_saved_predictions(digits):
    c, z = _json(digits), np.load(digits.path / "predictions.npz")
    assert list(c) == ["classes", "per_class", "confusion", "confusion_normalized", "most_confused",
                       "calibration", "train_balance", "worst_class"]
    probs, y = z["probs"], z["y"]
    assert probs.dtype == np.float32 and y.dtype == np.int64 and probs.shape == (digits.meta.sizes["test"], 10)
    assert c["classes"] == [str(i) for i in range(10)]
    pred = probs.argmax(1)
    p, r, f1, s = precision_recall_fscore_support(y, pred, labels=range(10), zero_division=0)
    for i, row in enumerate(c["per_class"]):
        assert row["class"] == str(i) and row["support"] == s[i]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f1[i]))
    cm = confusion_matrix(y, pred, labels=range(10))
    assert c["confusion"] == cm.tolist()
    np.testing.assert_allclose(c["confusion_normalized"], cm / cm.sum(1, keepdims=True))
    # the summary's own metrics agree with the saved probabilities
    assert digits["test/acc"] == pytest.approx((pred == y).mean())
    assert digits["test/macro_f1"] == pytest.approx(f1.mean())
    w = c["worst_class"]
    assert w["class"] == str(int(np.argmin(f1))) and w["f1"] == pytest.approx(f1.min())
    assert w["gap_to_mean"] == pytest.approx(f1.mean() - f1.min()) and w["gap_to_mean"] > 0
    assert digits["test/worst_class_f1"] == pytest.approx(f1.min())


def test_most_confused_pairs_are_the_largest_off_diagonal_counts(digits):
    c = _json(digits)
    cm = np.array(c["confusion"])
    off = cm - np.diag(np.diag(cm))
    expected = sorted(off[off > 0].tolist(), reverse=True)[:5]
    assert [m["count"] for m in c["most_confused"]] == expected
    for m in c["most_confused"]:
        assert m["true"] != m["predicted"] and cm[int(m["true"]), int(m["predicted"])] == m["count"]


def test_probabilities_are_the_saved_models_and_top_losses_the_highest(digits):
    z = np.load(digits.path / "predictions.npz")
    x = digits.task.data["test"].x
    model = Run.open(digits.path).model()  # rebuilt from the directory alone
    with torch.inference_mode():
        probs = model(x).softmax(-1).numpy()
    np.testing.assert_allclose(z["probs"], probs, atol=1e-5)
    loss = -np.log(np.take_along_axis(probs, z["y"][:, None], 1)[:, 0].astype(np.float64))
    assert z["top_loss_x"].shape == (16, 1, 8, 8) and z["top_loss_x"].dtype == np.float32
    np.testing.assert_allclose(np.sort(z["top_loss_loss"])[::-1], np.sort(loss)[::-1][:16], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z["top_loss_loss"], loss[z["top_loss_index"]], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(z["top_loss_x"], x[torch.as_tensor(z["top_loss_index"])].numpy())
    assert "top_loss_text" not in z


def test_ece_matches_a_naive_recomputation(digits):
    c, z = _json(digits), np.load(digits.path / "predictions.npz")
    probs, y = z["probs"].astype(np.float64), z["y"]
    bins = [[] for _ in range(15)]
    for p, t in zip(probs, y):
        conf = p.max()
        b = max(0, min(14, int(np.ceil(conf * 15)) - 1))  # (k/15, (k+1)/15]
        bins[b].append((conf, float(p.argmax() == t)))
    ece = sum(len(b) / len(y) * abs(np.mean([a for _, a in b]) - np.mean([f for f, _ in b])) for b in bins if b)
    assert c["calibration"]["ece"] == pytest.approx(ece, abs=1e-6)
    assert digits["test/ece"] == pytest.approx(ece, abs=1e-6) and ece > 0
    got = c["calibration"]["bins"]
    assert len(got) == 15 and got[0]["lo"] == 0 and got[-1]["hi"] == 1
    assert [b["count"] for b in got] == [len(b) for b in bins] and sum(b["count"] for b in got) == len(y)
    for g, b in zip(got, bins):
        if b:
            assert g["accuracy"] == pytest.approx(np.mean([a for _, a in b]))
            assert g["confidence"] == pytest.approx(np.mean([f for f, _ in b]))
        else:
            assert g["accuracy"] is None and g["confidence"] is None


def test_calibration_of_known_probabilities():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], np.float32)
    y = np.array([0, 1, 0, 1])
    # bins: 0.9 -> (0.8667, 0.9333]: accuracy 0.5, confidence 0.9; 0.6 and 0.7 -> separate bins, correct
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3
    assert calibration(probs, y)["ece"] == pytest.approx(expected, abs=1e-6)


def test_train_balance_counts_the_training_split(digits):
    bal = _json(digits)["train_balance"]
    y = digits.task.data["train"].y.numpy()
    assert bal == {str(i): int((y == i).sum()) for i in range(10)}
    assert sum(bal.values()) == digits.meta.sizes["train"]


def test_class_report_is_fast(digits):
    import time

    t = time.perf_counter()
    ClassReport().on_finish(digits, {})
    assert time.perf_counter() - t < 1.0


# --- the class-balance warning ----------------------------------------------------------------

def test_balance_warnings_wording():
    lines = balance_warnings(np.array([90, 29, 30, 31]), ["a", "b", "c", "d"])
    assert lines == ["warning: class 'b' has 29 training examples, less than a third of the largest class 'a' (90)"]
    assert balance_warnings(np.array([10, 10]), []) == []


def test_imbalanced_data_warns_at_the_start_and_digits_does_not(tmp_path, capsys, digits):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [300, 60, 200]).astype(np.int64)
    x = (rng.normal(size=(len(y), 6)) + y[:, None]).astype(np.float32)
    np.savez(tmp_path / "skewed.npz", x=x, y=y, classes=np.array(["common", "rare", "mid"]))
    run = fit(load_config("digits-mlp", ["data.name=npz", f"data.path={tmp_path / 'skewed.npz'}",
                                         "data.test_split=0.2", "train.epochs=1"]),
              run_dir=tmp_path / "run", verbose=0)
    err = capsys.readouterr().err
    n = int((run.task.data["train"].y == 1).sum())
    big = int((run.task.data["train"].y == 0).sum())
    assert f"warning: class 'rare' has {n} training examples, less than a third of the largest class 'common' ({big})" in err
    assert "'mid'" not in err
    assert _json(run)["train_balance"] == {"common": big, "rare": n, "mid": len(run.task.data["train"]) - n - big}
    assert "'rare' has less than a third" in (run.path / "MODEL_CARD.md").read_text()
    ClassBalance().on_start(digits)  # the balanced digits: nothing
    assert capsys.readouterr().err == ""


# --- the model card -------------------------------------------------------------------------

def test_card_parses_with_huggingface_hub_and_holds_the_test_metrics(digits):
    path = digits.path / "MODEL_CARD.md"
    card = ModelCard.load(path)
    d = card.data
    assert d.library_name == "deepstep" and d.datasets == ["digits"] and d.model_name == "digits-mlp"
    assert {"classify", "mlp", "deepstep"} <= set(d.tags)
    results = {r.metric_name: r for r in d.eval_results}
    assert results["test/acc"].metric_value == pytest.approx(digits["test/acc"])
    assert results["test/acc"].metric_type == "accuracy"
    assert results["test/ece"].metric_value == pytest.approx(digits["test/ece"])
    assert {r.task_type for r in d.eval_results} == {"image-classification"}
    assert {r.dataset_name for r in d.eval_results} == {"digits"}
    index = _front_matter(path)["model-index"]
    assert index[0]["name"] == "digits-mlp"
    names = {m["name"]: m["value"] for m in index[0]["results"][0]["metrics"]}
    assert names["test/acc"] == pytest.approx(digits["test/acc"])


def test_card_sections_per_class_table_and_recipe_text(digits):
    text = (digits.path / "MODEL_CARD.md").read_text()
    assert _sections(text) == SECTIONS
    c = _json(digits)
    for row in c["per_class"]:
        assert f"| {row['class']} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |" in text
    w = c["worst_class"]
    assert f"Worst class: '{w['class']}' with F1 {w['f1']:.3f}, {w['gap_to_mean']:.3f} below the mean" in text
    for m in c["most_confused"]:
        times = "once" if m["count"] == 1 else f"{m['count']} times"
        assert f"- '{m['true']}' predicted as '{m['predicted']}': {times}" in text
    params = sum(p.numel() for p in digits.model().parameters())
    assert f"- Parameters: {params:,}" in text
    assert f"torch {torch.__version__}" in text and "Seed: 0" in text
    cfg = load_config("digits-mlp")
    assert "13 people" in cfg.card.intended_use and cfg.card.limitations
    assert cfg.card.intended_use in text and cfg.card.limitations in text
    assert "for learning and experimenting with deep learning" not in text  # the generic sentence


def test_card_of_a_run_without_classes_has_no_per_class_parts(tmp_path):
    run = fit(load_config("digits-ae", ["train.epochs=1", "card.limitations=Only a smoke test."]),
              run_dir=tmp_path / "ae", verbose=0)
    assert not (run.path / "classes.json").exists() and not (run.path / "predictions.npz").exists()
    path = run.path / "MODEL_CARD.md"
    text = path.read_text()
    assert _sections(text) == SECTIONS
    assert "Per class" not in text and "Worst class" not in text and "Class balance" not in text
    assert "no per-class analysis" in text and "Only a smoke test." in text
    assert "for learning and experimenting with deep learning" in text  # no [card] intended_use
    results = {r.metric_name: r.metric_value for r in ModelCard.load(path).data.eval_results}
    assert results == {"test/recon_loss": pytest.approx(run["test/recon_loss"])}
    assert "test/ece" not in run.summary


def test_card_of_a_forecast_run_holds_its_test_metrics(tmp_path):
    run = fit(load_config("sunspots-gru", ["train.epochs=1"]), run_dir=tmp_path / "f", verbose=0)
    card = ModelCard.load(run.path / "MODEL_CARD.md")
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["test/rmse"] == pytest.approx(run["test/rmse"]) and "test/mae" in results
    assert {r.task_type for r in card.data.eval_results} == {"time-series-forecasting"}
    text = card.content
    assert "baseline/persistence_rmse" in text and "Per class" not in text


def test_card_section_is_checked():
    with pytest.raises(UserError, match="card"):
        load_config("digits-mlp", ["card.intended=x"])
    assert "not for real-world ocr" in load_config("digits-cnn").card.intended_use.lower()


def test_text_runs_store_token_ids_and_raw_strings_of_the_top_losses(tmp_path):
    rng = np.random.default_rng(1)
    words = {0: "red apple cherry ruby", 1: "blue sky ocean navy", 2: "green grass leaf moss"}
    rows = ["text,label"] + [f"{' '.join(rng.choice(words[k].split(), 4))} word{i},{k}"
                             for i, k in enumerate(rng.integers(0, 3, 120))]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    run = fit(load_config("fortunes-lstm", ["data.name=csv", f"data.path={tmp_path / 't.csv'}", "data.min_freq=1",
                                            "data.max_length=8", "train.epochs=1"]),
              run_dir=tmp_path / "run", verbose=0)
    z = np.load(run.path / "predictions.npz")
    assert z["top_loss_x"].dtype == np.int64 and z["top_loss_x"].shape[0] == 16
    texts = run.task.texts["test"][0]
    assert list(z["top_loss_text"]) == [texts[i] for i in z["top_loss_index"]]
    np.testing.assert_array_equal(z["top_loss_x"], run.task.tokenizer.encode([texts[i] for i in z["top_loss_index"]]))
    text = (run.path / "MODEL_CARD.md").read_text()
    assert load_config("fortunes-lstm").card.limitations in text and "text-classification" in text
