"""Sample quality of generative models: the Fréchet distance and class coverage, measured with a
fixed deepstep classifier per data set.

This is NOT the Inception FID of the GAN literature (Heusel et al. 2017): torchvision's Inception
network is not available here and its ImageNet features suit 28x28 gray images poorly. We keep
the recipe of FID — fit a Gaussian to a network's penultimate features of real and of generated
images, report the Fréchet distance between the two Gaussians,
    d^2 = |mu_r - mu_g|^2 + tr(C_r + C_g - 2 (C_r C_g)^(1/2)),
— but the network is a small CNN trained by deepstep on the same data set. Its recipe is fixed
(FEATURE_NET below: model, optimizer, epochs, seed; the data section follows the run's data set),
so figures of different runs on one data set are comparable with each other, and with nothing
else. The trained classifier is a run directory cached in $DEEPSTEP_CACHE/feature-nets/; the
first run on a data set trains it (3 epochs for Fashion-MNIST: about 6 minutes measured on a busy
2-core CPU) and later runs reuse it. Its own test accuracy is reported as `samples/feature_net_acc`.

Class coverage: the number of classes to which the classifier assigns at least 1% of the samples
(mode collapse shows as a low count).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data.download import cache_dir
from ..engine.fit import cached_run
from ..engine.run import Run
from ..engine.runtime import evaluating, rng_state, set_rng_state
from ..registry import DATASETS

FEATURE_NET_VERSION = 1
FEATURE_NET = {  # the fixed classifier recipe (data: the run's data set, normalized, full size)
    "task": "classify",
    "model": {"name": "convnet", "channels": [32, 64], "hidden": [128], "dropout": 0.2},
    "optim": {"name": "adam", "lr": 1e-3},
    "sched": {"name": "cosine"},
    "train": {"batch_size": 128, "seed": 0, "restore_best": False},
}
COVERAGE_SHARE = 0.01
SAMPLE_SEED = 1235  # seed of the generated images that are measured


def feature_epochs(n_train: int) -> int:
    """Epochs of the feature classifier: about 150,000 training examples seen, 3 to 40 epochs."""
    return max(3, min(40, math.ceil(150_000 / max(1, n_train))))


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu1, cov1) and N(mu2, cov2).

    tr((C1 C2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    matrix S C2 S with S = C1^(1/2) (same spectrum as C1 C2, all real and >= 0), which avoids a
    general matrix square root and its complex round-off."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    s = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = s @ cov2 @ s
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


class FeatureNet:
    """The fixed classifier of one data set: `features_and_classes` gives the penultimate
    activations (the head's pre-logits) and the predicted class of images in [0, 1] as the data
    set loads them."""

    def __init__(self, run: Run):
        self.run = run
        self.model = run.model()
        self.accuracy = run.summary["test/acc"]
        self.num_classes = run.meta.num_outputs

    @torch.inference_mode()
    def features_and_classes(self, x: torch.Tensor, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        feats, preds = [], []
        for i in range(0, len(x), batch):
            f = self.model.forward_features(self.run.preprocess(x[i:i + batch].float().cpu()))
            feats.append(self.model.forward_head(f, pre_logits=True).double().numpy())
            preds.append(self.model.forward_head(f).argmax(1).numpy())
        return np.concatenate(feats), np.concatenate(preds)


_LOADED: dict[str, FeatureNet] = {}  # folder -> the classifier, loaded once per process


def feature_net(data_cfg, log=print) -> FeatureNet:
    """The data set's fixed classifier, trained into the cache on first use. The caller's random
    state and thread count are left as they were (building a model draws random numbers), so a
    run that trains or loads the classifier continues exactly like one that does not."""
    folder = str(_folder(_data(data_cfg)))
    if folder in _LOADED and (Path(folder) / "summary.json").is_file():
        return _LOADED[folder]
    state, threads = rng_state(), torch.get_num_threads()
    try:
        with torch.inference_mode(False), torch.enable_grad():  # callers measure under no_grad
            _LOADED[folder] = _feature_net(data_cfg, log)
            return _LOADED[folder]
    finally:
        set_rng_state(state)
        torch.set_num_threads(threads)


def _data(data_cfg):
    """The data section of the feature classifier: the run's data set, normalized, full size."""
    return dataclasses.replace(data_cfg, normalize=True, limit=0, augment="", stream=False, download=True)


def _folder(data) -> Path:
    """Where the classifier of `data` is cached: the key covers its recipe and data section."""
    key = json.dumps({"v": FEATURE_NET_VERSION, "net": FEATURE_NET, "data": dataclasses.asdict(data)}, sort_keys=True)
    return cache_dir() / "feature-nets" / f"{data.name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _feature_net(data_cfg, log) -> FeatureNet:
    data = _data(data_cfg)
    folder = _folder(data)
    if not (folder / "summary.json").exists():
        n = len(DATASETS.get(data.name)(data).x_train)
        epochs = feature_epochs(int(n * (1 - data.val_split)))
        log(f"training the fixed feature classifier for samples/frechet on '{data.name}' once "
            f"({epochs} epochs, cached in {folder}) ...")
        spec = json.loads(json.dumps(FEATURE_NET))
        spec["train"]["epochs"] = epochs
        # fp32 as before train.precision = "auto" existed: the instrument stays the same one, and the
        # classifiers already cached (trained in fp32) keep their key
        spec["train"]["precision"] = "fp32"
        cfg = RunConfig.from_dict({**spec, "data": dataclasses.asdict(data), "recipe": "feature-net"},
                                  where="the feature classifier")
        cached_run(cfg, folder, verbose=0, what=f"the feature classifier of '{data.name}'", announce=False)
    return FeatureNet(Run.open(folder))


def sample_metrics(net: FeatureNet, real: torch.Tensor, fake: torch.Tensor, prefix: str = "samples") -> dict:
    """Fréchet distance between the features of `fake` and `real` images (both in [0, 1]) and the
    number of classes given at least 1% of the fakes."""
    fr, _ = net.features_and_classes(real)
    ff, cls = net.features_and_classes(fake)
    d = frechet_distance(*gaussian_stats(fr), *gaussian_stats(ff))
    share = np.bincount(cls, minlength=net.num_classes) / len(cls)
    return {f"{prefix}/frechet": d, f"{prefix}/class_coverage": int((share >= COVERAGE_SHARE).sum())}


def sample_quality(task, model, split: str) -> dict:
    """val: val/frechet with gen.eval_samples images; test: samples/frechet, samples/class_coverage
    (gen.test_samples) and the feature classifier's own test accuracy; at most as many images as the
    split holds. The images are generated with a fixed seed; the real ones are the split's first n."""
    n = task.cfg.gen.eval_samples if split == "val" else task.cfg.gen.test_samples
    if split not in task.data or not n:
        return {}
    real = task.data[split].x[:n]
    gen = torch.Generator(device=real.device).manual_seed(SAMPLE_SEED)
    with evaluating(model):
        fake = torch.cat([model.sample(min(1000, len(real) - i), generator=gen) for i in range(0, len(real), 1000)])
    net = feature_net(task.cfg.data, log_stderr)
    if split == "val":
        return {"val/frechet": sample_metrics(net, real, fake, "val")["val/frechet"]}
    return {**sample_metrics(net, real, fake), "samples/n": len(real), "samples/feature_net_acc": net.accuracy}


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
