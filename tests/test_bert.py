"""Fine-tuning a pretrained encoder (models/bert.py, data.tokenizer = "pretrained"): the guide's
sequence-classification example on the bundled MiniLM, a tiny random BERT written here (folder as
`save_pretrained` writes it) for fast checks of freezing, pooling, dynamic padding, the saved
tokenizer and the errors, and `deepstep train` + `deepstep predict` from the run directory alone."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import cli_env
from deepstep.config import SchedConfig, load_config
from deepstep.data.tokenize import PretrainedTokenizer
from deepstep.engine.optim import lr_multiplier
from deepstep.engine.runtime import Runtime
from deepstep.errors import UserError
from deepstep.models.layers import create_model
from deepstep.registry import TASKS

SPACE = "rocket orbit planet moon star comet galaxy launch astronaut telescope".split()
KITCHEN = "bread butter oven flour sugar recipe soup pepper garlic onion".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentences(words, n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(n)]


def write_tiny_bert(folder, layers: int = 2):
    """A random 2-layer, 16-wide BERT with a WordPiece tokenizer of the two topics' words."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = SPECIAL + SPACE + KITCHEN + ["the", "a", ","]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=40, pad_token_id=0)
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


def tiny_model(tiny, **kw):
    return create_model("bert", (16,), 2, 28, pretrained=str(tiny), **kw)


def padded(tiny, texts, n=16):
    tok = PretrainedTokenizer.from_pretrained(str(tiny), texts, n)
    return torch.as_tensor(tok.encode(texts)), tok


def test_the_guides_sequence_classification_example_on_the_bundled_model():
    from deepstep.models import bert

    result = doctest.testmod(bert, verbose=False)
    assert result.attempted >= 6 and result.failed == 0


def test_pretrained_tokenizer_pads_right_and_round_trips_through_the_run_folder(tiny, tmp_path):
    texts = ["Rocket orbit moon", "bread , butter and zebra", "soup"]
    ids, tok = padded(tiny, texts)
    assert ids.shape == (3, 16) and ids.dtype == torch.int64
    assert ids[0, :5].tolist() == [2, 5, 6, 8, 3]  # [CLS] rocket orbit moon [SEP], lower-cased
    assert ids[1].tolist().count(1) == 2  # "and", "zebra": [UNK]
    assert (ids[2, 3:] == 0).all()  # right padding with [PAD] = 0
    tok.save(tmp_path)
    again = PretrainedTokenizer.load(tmp_path)
    assert again.max_length == 16 and again.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(again.encode(texts), ids.numpy())
    assert PretrainedTokenizer.from_pretrained(str(tiny), ["moon " * 100], 0).max_length == 102  # 0: longest
    with pytest.raises(UserError, match="data.max_length = 102 is longer than the encoder's 40 positions"):
        create_model("bert", (102,), 2, 28, pretrained=str(tiny))


def test_freezing_keeps_frozen_parameters_bit_identical(tiny):
    from deepstep.config import OptimConfig
    from deepstep.engine.optim import Optimization

    model = tiny_model(tiny, freeze_embeddings=True, freeze_layers=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = Optimization(model.parameters(), OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1), SchedConfig(), 3, 1)
    ids, _ = padded(tiny, sentences(SPACE, 4, 0) + sentences(KITCHEN, 4, 1))
    y = torch.tensor([0] * 4 + [1] * 4)
    model.train()
    for _ in range(3):
        opt.step(torch.nn.functional.cross_entropy(model(ids), y))
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.embeddings.", "encoder.encoder.layer.0."))]
    trained = [k for k in before if k.startswith(("encoder.encoder.layer.1.", "head."))]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trained if "LayerNorm" not in k)
    with pytest.raises(UserError, match="freeze_layers = 3 is out of range: this encoder has 2 layers"):
        tiny_model(tiny, freeze_layers=3)


def test_pooling_cls_takes_the_first_position_and_mean_averages_the_real_tokens(tiny):
    ids, _ = padded(tiny, ["rocket moon star", "soup"])
    cls, mean = tiny_model(tiny, pooling="cls").eval(), tiny_model(tiny, pooling="mean").eval()
    with torch.no_grad():
        h = cls.encoder(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
        fc, fm = cls.forward_features(ids), mean.forward_features(ids)
    torch.testing.assert_close(fc, h[:, 0])
    torch.testing.assert_close(fm[0], h[0, :5].mean(0))  # [CLS] rocket moon star [SEP]
    torch.testing.assert_close(fm[1], h[1, :3].mean(0))  # [CLS] soup [SEP]
    assert not torch.allclose(fc, fm)
    with pytest.raises(UserError, match="pooling"):
        tiny_model(tiny, pooling="max")


def test_dynamic_padding_gives_the_logits_of_full_padding(tiny):
    ids, _ = padded(tiny, ["rocket moon", "bread butter oven flour sugar soup"])
    assert (ids[:, 8:] == 0).all() and (ids[1, :8] != 0).all()  # the longest row: 8 tokens, then padding
    for pooling in ("cls", "mean"):
        model = tiny_model(tiny, pooling=pooling).eval()
        with torch.no_grad():
            dynamic = model(ids)
            model.dynamic_padding = False
            full = model(ids)
        torch.testing.assert_close(dynamic, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad, needle", [
    ("/nonexistent/bert-folder", "'/nonexistent/bert-folder' does not exist: expected a folder holding config.json"),
    ("{empty}", "lacks config.json. Expected a folder as `save_pretrained` writes it"),
    ("{no_weights}", "lacks weights (model.safetensors or pytorch_model.bin)"),
])
def test_a_bad_pretrained_source_is_a_user_error_with_exit_2(tmp_path, monkeypatch, capsys, tiny, bad, needle):
    from deepstep.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "no_weights").mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / f, tmp_path / "no_weights")
    bad = bad.format(empty=tmp_path / "empty", no_weights=tmp_path / "no_weights")
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "fortunes-minilm", "--set", f"model.pretrained={bad}", "--set", "data.limit=200",
               "--quiet", "--run-dir", "R"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and needle in err and bad in err, err


def test_tokenizer_and_model_must_match(tmp_path, monkeypatch, capsys, tiny):
    from deepstep.cli import main

    monkeypatch.chdir(tmp_path)
    for sets, needle in ((["data.tokenizer=word", f"model.pretrained={tiny}"], "set data.tokenizer = 'pretrained'"),
                         (["model.name=lstm"], "model 'lstm' has no `pretrained` source")):
        args = [a for s in sets for a in ("--set", s)]
        rc = main(["train", "fortunes-minilm", *args, "--set", "data.limit=200", "--quiet", "--run-dir", "R"])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err, err


def test_linear_schedule_warms_up_then_decays_to_min_lr():
    f, warm = lr_multiplier(SchedConfig(name="linear", warmup_epochs=1), 1.0, 4, 3)
    assert warm == 4
    assert [round(f(s), 3) for s in range(12)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5,
                                                   0.375, 0.25, 0.125]
    f, _ = lr_multiplier(SchedConfig(name="linear", min_lr=0.1), 1.0, 5, 2)
    assert f(0) == 1.0 and f(10) == pytest.approx(0.1)


def test_importing_the_registry_does_not_import_transformers():
    code = ("import sys; from deepstep.registry import MODELS; assert 'bert' in MODELS.names(); "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    r = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_two_steps_on_the_bundled_minilm():
    texts = ["Beam me up, Scotty.", "The kernel panicked again.", "Captain's log, stardate 3012.",
             "Install the package with apt-get."]
    ids, tok = padded("minilm", texts, 24)
    assert tok.vocab_size == 30522 and tok.pad_id == 0 and ids[0, 0].item() == 101  # [CLS]
    model = create_model("bert", (24,), 2, tok.vocab_size, freeze_embeddings=True, freeze_layers=4)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    top = sum(p.numel() for layer in model.encoder.encoder.layer[4:] for p in layer.parameters())
    assert trainable == top + 384 * 2 + 2  # the top 2 of 6 layers (1.8M parameters each) and the head
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    y = torch.tensor([0, 1, 0, 1])
    losses = []
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(ids), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and model(ids).shape == (4, 2)


# --- train + predict through the CLI, from the run directory alone ---------------------------

def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "deepstep", *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """fortunes-minilm on a two-topic JSONL file with a copy of the tiny BERT, deleted after training."""
    cwd = tmp_path_factory.mktemp("bert")
    write_tiny_bert(cwd / "copy")
    texts = sentences(SPACE, 40, 0) + sentences(KITCHEN, 40, 1)
    labels = ["space"] * 40 + ["kitchen"] * 40
    (cwd / "d.jsonl").write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in zip(texts, labels)))
    sets = ["data.name=jsonl", "data.path=d.jsonl", "data.limit=70", "model.pretrained=copy", "train.epochs=1",
            "train.batch_size=8", "train.threads=1", "optim.lr=1e-3", "data.max_length=12"]
    r = cli("train", "fortunes-minilm", *[a for s in sets for a in ("--set", s)], "--quiet", "--run-dir", "R",
            cwd=cwd)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(cwd / "copy")  # predict must not need the pretrained source
    return cwd, cwd / "R", r


def test_bert_run_directory_holds_what_predict_needs(bert_run):
    cwd, run, r = bert_run
    s = json.loads((run / "summary.json").read_text())
    for key in ("test/acc", "test/macro_f1", "baseline/tfidf_acc", "baseline/tfidf_macro_f1"):
        assert 0.0 <= s[key] <= 1.0, key
    assert s["expect"]["test/macro_f1"]["target"] == "baseline/tfidf_macro_f1"
    assert (run / "encoder" / "config.json").is_file() and (run / "tokenizer" / "deepstep.json").is_file()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["in_shape"] == [12] and meta["vocab_size"] == 28


def test_saved_pretrained_tokenizer_reproduces_the_training_ids(bert_run, tiny, monkeypatch):
    cwd, run, _ = bert_run
    monkeypatch.chdir(cwd)
    from deepstep.run import load_run

    loaded = load_run(run)
    cfg = load_config(str(run / "config.toml"), [f"model.pretrained={tiny}"])  # the deleted copy's twin
    task = TASKS.get("classify")(cfg, Runtime(device="cpu", seed=cfg.train.seed))
    np.testing.assert_array_equal(loaded.inference().tokenizer.encode(list(task.texts["test"][0])), task.data["test"].x.numpy())


def test_predict_from_the_run_directory_alone(bert_run):
    cwd, run, _ = bert_run
    r = cli("predict", run, "the astronaut saw a comet", "garlic onion soup", "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["input"] for row in rows] == ["the astronaut saw a comet", "garlic onion soup"]
    assert all(row["top"][0]["class"] in ("space", "kitchen") for row in rows)


def test_hub_offline_switches_the_hub_off_for_the_block_only(monkeypatch):
    import huggingface_hub.constants as hub

    from deepstep.models.bert import hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with hub_offline():
        assert hub.HF_HUB_OFFLINE and hub.is_offline_mode()
    assert not hub.HF_HUB_OFFLINE and "HF_HUB_OFFLINE" not in os.environ


def test_explain_a_bert_run_token_attributions_from_its_directory(bert_run):
    """The explanations plug-in explained 4 test texts at the end of training; `deepstep explain`
    then attributes a new sentence from the run directory alone (the pretrained copy is deleted)."""
    cwd, run, _ = bert_run
    e = json.loads((run / "explain" / "explain.json").read_text())["methods"]["integrated-gradients"]
    assert len(e["inputs"]) == 4 and {"randomization", "deletion", "completeness"} <= set(e)
    first = e["inputs"][0]
    assert first["tokens"][0] == "[CLS]" and first["tokens"][-1] == "[SEP]"
    assert len(first["tokens"]) == len(first["scores"])
    r = cli("explain", run, "the astronaut saw a comet", "--out", "ex", cwd=cwd)
    assert r.returncode == 0, r.stderr
    z = np.load(cwd / "ex" / "explain-integrated-gradients.npz")
    ids, attr = z["x"], z["attributions"]
    assert ids.shape == attr.shape and (attr[ids == 0] == 0).all() and np.abs(attr[ids != 0]).sum() > 0
    assert "[UNK]" in json.loads((cwd / "ex" / "explain.json").read_text())["methods"][
        "integrated-gradients"]["inputs"][0]["tokens"]  # "saw" is not in the tiny vocabulary
