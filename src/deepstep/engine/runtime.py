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


PRECISIONS = ("auto", "fp32", "bf16")
# train.threads = "auto": one thread below this many floating-point operations per forward call,
# every core above (measured: bench/speed.py --parts threads, docs/speed.md: on an idle 2-core
# machine 2 threads were 1.23-1.71x faster from digits-cnn's 22 MFLOPs up, and no faster for
# digits-mlp's 3 MFLOPs, which ran 17x slower on 2 threads when the other core was busy)
THREADS_FLOPS = 10e6


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA GPU that supports it (Ampere and later),
    or a CPU with AVX512-BF16 or AMX-BF16. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


def has_conv(model: torch.nn.Module, dims: tuple[int, ...] = (1, 2, 3)) -> bool:
    kinds = {1: (torch.nn.Conv1d, torch.nn.ConvTranspose1d), 2: (torch.nn.Conv2d, torch.nn.ConvTranspose2d),
             3: (torch.nn.Conv3d, torch.nn.ConvTranspose3d)}
    types = tuple(t for d in dims for t in kinds[d])
    return any(isinstance(m, types) for m in model.modules())


def resolve_precision(precision: str, device: torch.device, model: torch.nn.Module) -> str:
    """train.precision "auto": bf16 autocast for convolutional models on a device that runs bf16
    natively, fp32 otherwise (MLPs, recurrent nets and Transformers of the recipes' sizes gain
    nothing from bf16 on a CPU: measured in docs/speed.md)."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) and has_conv(model) else "fp32"


def resolve_channels_last(channels_last, precision: str, model: torch.nn.Module) -> bool:
    """train.channels_last "auto": on for 2-D convolutional models under bf16 (where oneDNN's
    channels-last kernels are the fast ones), off otherwise, so fp32 stays bit-identical."""
    if channels_last != "auto":
        return bool(channels_last)
    return precision == "bf16" and has_conv(model, (2,))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(flops: float, cores: int) -> int:
    """train.threads = "auto": one thread for a forward call under THREADS_FLOPS (a small model or
    batch: thread synchronisation costs more than it saves, and a second thread on a busy core
    stalls every operation), every usable core otherwise."""
    return 1 if flops < THREADS_FLOPS else max(1, cores)


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
        precision: 'fp32', 'bf16' (autocast; parameters stay fp32) or 'auto' (resolve_precision:
            bf16 for conv models where the device runs bf16 natively).
        seed: seeds python, numpy and torch.
        deterministic: deterministic kernels only.
        threads: CPU threads (0 keeps torch's default; 'auto': threads_for at the first forward).
        channels_last: True, False or 'auto' (resolve_channels_last).

    Under `torchrun` (WORLD_SIZE > 1) it joins the process group (NCCL on GPUs, gloo on CPU);
    tasks then shard each batch by `rank` and average gradients with DDP.
    """

    def __init__(self, device="auto", precision="fp32", seed=0, deterministic=False, threads=0, channels_last=False,
                 compile=False):
        self.compile = compile
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device(device)
        self.precision = precision  # "auto" is resolved by the first module() (resolve_precision)
        self.channels_last = channels_last  # the same ("auto": resolve_channels_last)
        self.seed = seed
        # "auto": chosen at the first forward call (threads_for), which counts its operations
        self.threads_pending = threads == "auto" and self.device.type == "cpu"
        self.flops_per_call = 0.0
        if isinstance(threads, int) and threads:
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
        if self.precision == "auto":  # the run's first module decides for the run
            self.precision = resolve_precision(self.precision, self.device, model)
        if self.channels_last == "auto":
            self.channels_last = resolve_channels_last(self.channels_last, self.precision, model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        inner: torch.nn.Module = model
        if self.distributed and ddp and any(p.requires_grad for p in model.parameters()):
            ids = [self.device.index] if self.device.type == "cuda" else None
            inner = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.compile:
            # static shapes: each batch shape (full, last partial, evaluation) gets its own graph
            # whatever shapes came before, so a resumed run runs the kernels of an uninterrupted one
            # (with automatic dynamic shapes it switched graphs after the first partial batch)
            inner = torch.compile(inner, dynamic=False)
        return RuntimeModule(model, inner, self)

    def choose_threads(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """train.threads = "auto": count the floating-point operations of one forward call like the
        first one (torch's FlopCounterMode; evaluation mode, no gradient, the random generators
        restored, so nothing of the run changes) and set the thread count by `threads_for`."""
        self.threads_pending = False
        from torch.utils.flop_counter import FlopCounterMode

        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad(), evaluating(model), \
                    FlopCounterMode(display=False) as counter, self.autocast():
                model(*self.prepare(args), **kwargs)
            self.flops_per_call = float(counter.get_total_flops())
        except Exception:  # noqa: BLE001 - an op the counter cannot follow: assume a big model
            self.flops_per_call = float("inf")
        torch.set_num_threads(threads_for(self.flops_per_call, usable_cores()))

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
            return f"cuda ({torch.cuda.get_device_name(self.device)}{', bf16' if self.precision == 'bf16' else ''})"
        n = torch.get_num_threads()
        parts = ["threads auto" if self.threads_pending else f"{n} thread{'' if n == 1 else 's'}"]
        parts += (["bf16"] if self.precision == "bf16" else []) + (["channels_last"] if self.channels_last is True else [])
        return f"{self.device.type} ({', '.join(parts)})"


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
        if self._rt.threads_pending:
            self._rt.choose_threads(self._plain, args, kwargs)
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
