"""Which stages of a Fashion-MNIST ResNet-18 carry over to digits? A linear probe per stage.

For each backbone (a random ResNet-18, and the cached Fashion-MNIST pretrainings that
fashion-to-digits-transfer can use) and each stage (layer1..layer4), the frozen network encodes
the recipe's 100 training digits and its 899 test digits (8x8, upsampled to 28x28 inside the
model), the stage's output is average-pooled to 2x2 and standardized, and a logistic regression
(C = 0.1) is fitted on the 100. The table shows the test accuracy for seeds 0 / 1 / 2 (each seed
draws other training digits and another test part) and their mean.

This is the evidence behind the recipe's `model.pretrained_upto = "layer3"`: early Fashion-MNIST
stages separate digits better than random ones, the last stage worse.

    python bench/transfer_probe.py              # pretrains the backbones once if not cached
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from deepstep.config import load_config
from deepstep.engine.runtime import Runtime
from deepstep.models.layers import create_model
from deepstep.run import load_run
from deepstep.tasks.supervised import Supervised
from deepstep.tasks.transfer import pretrained_run

STAGES = ("layer1", "layer2", "layer3", "layer4")
BACKBONES = {"fashion 28x28": [], "fashion at 8x8": ["data.image_size=8", "model.resize=28"]}


def stage_features(model, x: torch.Tensor, stage: int) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for name in STAGES[: stage + 1]:
            x = getattr(model, name)(x)
        return F.adaptive_avg_pool2d(x, 2).flatten(1).numpy()


def probe(model, stage: int, data) -> float:
    (xtr, ytr), (xte, yte) = data
    ftr, fte = stage_features(model, xtr, stage), stage_features(model, xte, stage)
    scale = StandardScaler().fit(ftr)
    clf = LogisticRegression(C=0.1, max_iter=3000).fit(scale.transform(ftr), ytr)
    return clf.score(scale.transform(fte), yte)


def main() -> None:
    torch.set_num_threads(1)
    splits = []
    for seed in (0, 1, 2):
        cfg = load_config("fashion-to-digits-transfer", [f"train.seed={seed}", "transfer.pretrain=", "train.threads=1"])
        task = Supervised(cfg, Runtime.from_config(cfg.train))
        splits.append([(task.data[k].x.cpu(), task.data[k].y.cpu().numpy()) for k in ("train", "test")])
    torch.manual_seed(0)
    models = {"random": create_model("resnet18", (1, 8, 8), 10)}
    for name, overrides in BACKBONES.items():
        models[name] = load_run(pretrained_run("fashion-resnet18", overrides)).model()
    print(f"{'backbone':<16}{'stage':<8}{'seeds 0 / 1 / 2':<24}mean")
    for name, model in models.items():
        for stage, stage_name in enumerate(STAGES):
            accs = [probe(model, stage, data) for data in splits]
            print(f"{name:<16}{stage_name:<8}{' / '.join(f'{a:.3f}' for a in accs):<24}{np.mean(accs):.3f}", flush=True)


if __name__ == "__main__":
    main()
