"""In-memory data: the form every loader returns (`Arrays`), the seeded validation/test split,
normalization fitted on the training split only, and the fast path — tensors resident on the
training device, batched by indexing with a per-epoch seeded permutation (no per-sample
`__getitem__`, no DataLoader)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import UserError

KINDS = ("image", "table", "series", "text")


@dataclass
class Arrays:
    """A data set as loaders return it.

    x arrays are float32: images (N, C, H, W) scaled to [0, 1]; tables (N, F); series (N, C, T);
    or, for kind "text", object arrays of raw strings (N,) that the task tokenizes after the split.
    y arrays are int64 class indices (classification) or float32 targets (regression).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    kind: str = "table"
    source: str = ""
    scale: float = 1.0  # applied to x when read: 1/255 for uint8 images streamed from disk

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        if len(self.x_train) != len(self.y_train):
            raise UserError(f"{self.source}: {len(self.x_train)} inputs but {len(self.y_train)} labels.")
        if len(self.x_train) == 0:
            raise UserError(f"{self.source}: the data set is empty.")


def resize_images(arrays: Arrays, size: int) -> Arrays:
    """Images (N, C, H, W) of both splits resized to size x size (data.image_size): bilinear with
    antialiasing, so shrinking averages neighbouring pixels like a lower-resolution camera would."""
    def resize(x):
        if x is None:
            return x
        x = [torch.as_tensor(np.asarray(x[i:i + 4096], dtype=np.float32) * np.float32(arrays.scale))
             for i in range(0, len(x), 4096)]
        return torch.cat([F.interpolate(c, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                          if tuple(c.shape[-2:]) != (size, size) else c for c in x]).numpy()

    if size < 1:
        raise UserError(f"data.image_size = {size} must be a size in pixels (or 0 to keep the images' size).")
    if all(x is None or tuple(x.shape[-2:]) == (size, size) for x in (arrays.x_train, arrays.x_test)):
        return arrays
    return replace(arrays, x_train=resize(arrays.x_train), x_test=resize(arrays.x_test), scale=1.0)


@dataclass
class Normalizer:
    """Standardize with per-channel (images, series) or per-feature (tables) statistics."""

    mean: list[float]
    std: list[float]
    kind: str

    @classmethod
    def fit(cls, x: np.ndarray, kind: str) -> Normalizer:
        axes = (0,) if kind == "table" else tuple(i for i in range(x.ndim) if i != 1)
        mean = x.mean(axis=axes, dtype=np.float64)
        std = x.std(axis=axes, dtype=np.float64)
        std = np.where(std < 1e-6, 1.0, std)
        return cls(np.atleast_1d(mean).tolist(), np.atleast_1d(std).tolist(), kind)

    @classmethod
    def identity(cls, x: np.ndarray, kind: str) -> Normalizer:
        n = x.shape[1]
        return cls([0.0] * n, [1.0] * n, kind)

    def _shape(self, ndim: int) -> tuple:
        return (1, -1) + (1,) * (ndim - 2)

    def __call__(self, x):
        lib = torch if torch.is_tensor(x) else np
        mean = lib.asarray(self.mean, dtype=lib.float32).reshape(self._shape(x.ndim))
        std = lib.asarray(self.std, dtype=lib.float32).reshape(self._shape(x.ndim))
        if torch.is_tensor(x):
            mean, std = mean.to(x.device), std.to(x.device)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "kind": self.kind}


def split(arrays: Arrays, val_split: float, test_split: float, seed: int, stratify: bool = True,
          need_test: bool = True):
    """Hold out test (if the data set has none) and validation parts, fixed by `seed`.

    Returns {'train': (x, y), 'val': (x, y) or None, 'test': (x, y) or None}."""
    from sklearn.model_selection import train_test_split  # imported here: 2 s of CLI start-up

    x, y = arrays.x_train, arrays.y_train
    strat = y if stratify and y.dtype.kind in "iu" else None

    def cut(x, y, frac, salt):
        s = y if strat is not None else None
        if s is not None and np.bincount(s).min(initial=2) < 2:
            s = None  # a class with one example cannot be stratified
        try:
            return train_test_split(x, y, test_size=frac, random_state=seed + salt, stratify=s)
        except ValueError as e:
            raise UserError(f"{arrays.source}: cannot hold out {frac:.0%} of {len(x)} examples ({e}).") from None

    x_test = y_test = None
    if arrays.x_test is None and (need_test or test_split > 0):
        if test_split <= 0:
            raise UserError(f"{arrays.source} has no test split: set data.test_split to a fraction such as 0.2.")
        x, x_test, y, y_test = cut(x, y, test_split, 1)
    elif arrays.x_test is not None:
        x_test, y_test = arrays.x_test, arrays.y_test
    val = None
    if val_split > 0:
        x, x_val, y, y_val = cut(x, y, val_split, 2)
        val = (x_val, y_val)
    return {"train": (x, y), "val": val, "test": None if x_test is None else (x_test, y_test)}


class TensorData:
    """Inputs and targets resident on one device, batched by indexing."""

    def __init__(self, x, y, device):
        self.x = torch.as_tensor(x).to(device)
        self.y = torch.as_tensor(y).to(device)

    def __len__(self) -> int:
        return len(self.y)

    def sample(self, n: int) -> torch.Tensor:
        return self.x[:n].cpu()

    def batches(self, batch_size: int, seed: int | None = None, rank: int = 0, world: int = 1, drop_last=False,
                with_index: bool = False):
        """Yield (x, y) batches, or (x, y, positions) `with_index`; shuffled with a permutation fixed by
        `seed` (None: in order).
        When distributed, each rank takes every `world`-th example of the permutation; the last
        n % world examples of the permutation are left out so that every rank runs the same number
        of steps (an extra step on one rank breaks DDP's gradient all-reduce: gloo aborts, NCCL hangs)."""
        n = len(self)
        if seed is None:
            for i in range(0, n, batch_size):
                x, y = self.x[i:i + batch_size], self.y[i:i + batch_size]
                yield (x, y, torch.arange(i, i + len(y), device=y.device)) if with_index else (x, y)
            return
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[: n - n % world][rank::world].to(self.x.device)
        stop = len(idx) - (len(idx) % batch_size if drop_last else 0)
        for i in range(0, stop, batch_size):
            j = idx[i:i + batch_size]
            yield (self.x[j], self.y[j], j) if with_index else (self.x[j], self.y[j])


class StreamData:
    """The streaming path, for data that does not fit in memory: inputs stay on disk (a
    memory-mapped array) and a DataLoader reads, scales and normalizes one batch of rows at a
    time in worker processes. Batches follow the same seeded permutation as `TensorData`, so a
    streamed run computes exactly what the in-memory run computes.

    Args:
        source: array-like of all examples (e.g. np.load(..., mmap_mode="r")).
        rows: which rows of `source` form this part. y: their targets (in memory).
        norm: the training split's Normalizer. scale: factor applied first (1/255 for uint8 images).
    """

    def __init__(self, source, rows: np.ndarray, y: np.ndarray, norm, scale: float, device, workers: int = 2):
        self.source, self.rows, self.y_all = source, np.asarray(rows), torch.as_tensor(y)
        self.norm, self.scale, self.device, self.workers = norm, scale, device, workers

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the examples at `positions` of this part (host memory)."""
        positions = np.asarray(positions)
        x = np.asarray(self.source[self.rows[positions]], dtype=np.float32) * np.float32(self.scale)
        return torch.from_numpy(np.ascontiguousarray(self.norm(x))), self.y_all[positions]

    def sample(self, n: int) -> torch.Tensor:
        return self.read(np.arange(min(n, len(self))))[0]

    def _order(self, batch_size, seed, rank, world):
        n = len(self)
        if seed is None:
            idx = np.arange(n)
        else:
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(n, generator=g)[: n - n % world][rank::world].numpy()
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]

    def batches(self, batch_size: int, seed: int | None = None, rank: int = 0, world: int = 1,
                with_index: bool = False):
        """Same contract as `TensorData.batches`; batches are read by DataLoader workers."""
        order = self._order(batch_size, seed, rank, world)
        loader = torch.utils.data.DataLoader(
            _Rows(self), sampler=order, batch_size=None,
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0))  # its own: the global RNG (dropout) stays untouched
        for positions, (x, y) in zip(order, loader):  # the loader keeps the sampler's order
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield (x, y, torch.as_tensor(positions, device=self.device)) if with_index else (x, y)


class _Rows(torch.utils.data.Dataset):
    """A DataLoader dataset whose items are whole batches: index -> (x, y) of those rows."""

    def __init__(self, data: StreamData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, positions):
        return self.data.read(positions)


def limit_stratified(y: np.ndarray, n: int) -> np.ndarray:
    """Indices (in their order) of n examples keeping each class's share of y (largest remainder),
    each class's first ones: data.train_limit for classification, so 100 digits hold about 10 of
    each digit rather than whatever a random draw gives (a draw can leave 2 of one class)."""
    if n >= len(y):
        return np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * n / len(y)
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: n - take.sum()]] += 1
    keep = np.concatenate([np.flatnonzero(y == c)[:k] for c, k in zip(classes, take)])
    return np.sort(keep)


def augment_images(x: torch.Tensor, kind: str, max_shift: int = 2, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Horizontal flips and/or shifts of up to `max_shift` pixels (zero padded), batched.

    Flips are random, or given: `flip`, one bool per example (alternating flips, `alternate_flips`)."""
    if "flip" in kind:
        if flip is None:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if "shift" in kind:
        b, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (max_shift,) * 4)
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2,)).tolist()  # one shift per batch keeps it cheap
        x = padded[:, :, dy:dy + h, dx:dx + w]
    return x


def alternate_flips(n: int, seed: int) -> torch.Tensor:
    """Which of n training examples are mirrored in even epochs (a fixed random half, drawn from
    `seed`); odd epochs mirror the other half. Alternating flips, as airbench does: every image is
    seen both ways in every two epochs, where random flips show half of them the same way
    twice in a row."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
