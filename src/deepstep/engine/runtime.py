"""Device, precision, seeding and torch.distributed behind one thin object (cf. Lightning Fabric).

Tasks ask the runtime to place modules and to reduce metrics across processes; the loop never
touches devices itself. The runtime owns every forward: `Runtime.module(model)` returns a
`RuntimeModule` that runs the model's forward *and its other methods and sub-modules* (a GAN's
`discriminator`, a VAE's `encode`, a policy's `act`) under bf16 autocast when
`train.precision = "bf16"`, hands 4-D float inputs over in channels_last when
`train.channels_last`, and calls a `torch.compile`d forward when `train.compile`. Tasks therefore
contain no autocast or memory-format code; `unwrap` strips the wrapper, DDP and compile, and
`evaluating(*modules)` is the one "eval mode and back" block.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu. An unavailable device is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device = '{name}' is not a device: use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device = '{name}' but no CUDA GPU is available here: use auto or cpu.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"train.device = '{name}' but MPS is not available here: use auto or cpu.")
    return dev


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def rng_state() -> dict:
    """All random generator states, in a form `torch.load(weights_only=True)` accepts."""
    state = {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Runtime:
    """Where and how tensors are computed.

    Args:
        device: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.
        precision: 'fp32' or 'bf16' (autocast; parameters stay fp32).
        seed: seeds python, numpy and torch.
        deterministic: deterministic kernels only.
        threads: CPU threads (0 keeps torch's default).

    Under `torchrun` (WORLD_SIZE > 1) it joins the process group (NCCL on GPUs, gloo on CPU);
    tasks then shard each batch by `rank` and average gradients with DDP.
    """

    def __init__(self, device="auto", precision="fp32", seed=0, deterministic=False, threads=0, channels_last=False,
                 compile=False):
        self.compile = compile
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device(device)
        self.precision = precision
        self.channels_last = channels_last
        self.seed = seed
        if threads:
            torch.set_num_threads(threads)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        seed_everything(seed, deterministic)

    def seed_rank(self) -> None:
        """Give each process its own random stream for dropout and augmentation: rank r > 0 reseeds
        with `seed + r` once the task (and so the model, which DDP copies from rank 0) is built.
        Rank 0 keeps the stream of a single-process run, so its results do not move. The shared
        data permutation has its own generator (seeded by the epoch), the same on every rank."""
        if self.rank > 0:
            seed_everything(self.seed + self.rank)

    @classmethod
    def from_config(cls, train_cfg) -> Runtime:
        return cls(
            device=train_cfg.device,
            precision=train_cfg.precision,
            seed=train_cfg.seed,
            deterministic=train_cfg.deterministic,
            threads=train_cfg.threads,
            channels_last=train_cfg.channels_last,
            compile=train_cfg.compile,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def module(self, model: torch.nn.Module, ddp: bool = True) -> RuntimeModule:
        """Move a model to the device (and memory format), wrap it in DDP when distributed (and
        `ddp`: modules with trainable parameters that every rank updates), compile its forward
        when asked, and return the `RuntimeModule` that runs it under this runtime's precision."""
        model = unwrap(model).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        inner: torch.nn.Module = model
        if self.distributed and ddp and any(p.requires_grad for p in model.parameters()):
            ids = [self.device.index] if self.device.type == "cuda" else None
            inner = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.compile:
            inner = torch.compile(inner)
        return RuntimeModule(model, inner, self)

    def prepare(self, args: tuple) -> tuple:
        """Inputs as the model wants them: 4-D float tensors in channels_last when asked."""
        if not self.channels_last:
            return args
        return tuple(a.contiguous(memory_format=torch.channels_last)
                     if torch.is_tensor(a) and a.ndim == 4 and a.is_floating_point() else a for a in args)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over processes; the tensor may live anywhere (NCCL needs it on the GPU)."""
        if self.distributed:
            home = t.device
            t = t.to(self.device)
            dist.all_reduce(t)
            t = t.to(home)
        return t

    def broadcast(self, obj):
        """Rank 0's `obj` (a small picklable value, e.g. the run folder) on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj` (small and picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def describe(self) -> str:
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        n = torch.get_num_threads()
        return f"{self.device.type} ({n} thread{'' if n == 1 else 's'})"


class RuntimeModule(torch.nn.Module):
    """A model as the runtime runs it (cf. Lightning Fabric's module wrapper).

    `wrapper(x)` runs the (DDP-wrapped, compiled) forward under autocast with prepared inputs.
    Any other method of the model (`wrapper.encode(x)`, `wrapper.act(obs)`) and any sub-module
    (`wrapper.discriminator(x)`, itself wrapped) runs under autocast too, on the plain model.
    Parameters, `train()`/`eval()` and `state_dict()` are the model's (keys prefixed `module.`:
    save `unwrap(wrapper).state_dict()`)."""

    def __init__(self, plain: torch.nn.Module, inner: torch.nn.Module, runtime: Runtime):
        super().__init__()
        self.module = inner  # registered: parameters, train/eval and .to() reach the model
        object.__setattr__(self, "_plain", plain)  # not registered: no duplicate parameters
        object.__setattr__(self, "_inner", inner)  # the same, without nn.Module's attribute lookup
        object.__setattr__(self, "_rt", runtime)
        object.__setattr__(self, "_children_cache", {})
        # fp32 without channels_last: nothing to add around the call (one Python frame per step)
        object.__setattr__(self, "_direct", runtime.precision != "bf16" and not runtime.channels_last)

    def __call__(self, *args, **kwargs):  # hooks belong on the model, so skip nn.Module's dispatch here
        if self._direct:
            return self._inner(*args, **kwargs)
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        with self._rt.autocast():
            return self._inner(*self._rt.prepare(args), **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # registered parameters, buffers, sub-modules
        except AttributeError:
            pass
        attr = getattr(self._plain, name)
        if isinstance(attr, torch.nn.Module):
            cache = self._children_cache
            if name not in cache or cache[name]._plain is not attr:
                cache[name] = RuntimeModule(attr, attr, self._rt)
            return cache[name]
        if callable(attr) and getattr(attr, "__self__", None) is self._plain:
            rt = self._rt

            def method(*args, **kwargs):
                with rt.autocast():
                    return attr(*rt.prepare(args), **kwargs)

            return method
        return attr


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a RuntimeModule, DDP wrapper and torch.compile."""
    while True:
        if isinstance(model, RuntimeModule):
            model = model._plain
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def evaluating(*modules: torch.nn.Module):
    """Evaluation mode for `modules` inside the block, each back in its own mode afterwards."""
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(modules, was):
            m.train(w)
