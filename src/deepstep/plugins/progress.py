"""What a user watches while a run trains: a rich progress bar on a terminal, plain lines in a
file or pipe, and in a Jupyter or Colab notebook one live HTML block (`NotebookView`).

The notebook view is updated in place through an IPython display handle (`display_id`) rather
than rich's live display: rich needs ipywidgets (and a front end with widget support) for that,
while display handles work in JupyterLab, Notebook 7, Colab and VS Code as they are, and the
last state stays in the saved notebook as plain HTML. Updates are throttled (at most about four a
second during an epoch, always at its end), so a fast run does not flood the front end.
"""

from __future__ import annotations

import html
import sys
import time

from ..engine.logs import format_logs
from ..engine.plugin import Plugin
from ..registry import PLUGINS


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (JupyterLab, Notebook, VS Code, Colab)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    name = type(shell).__name__ if shell is not None else ""
    return name == "ZMQInteractiveShell" or "google.colab" in str(type(shell))


def thinned(epoch: int, epochs: int) -> bool:
    """The epochs a plain log prints (about 20 per run, and the first)."""
    return epoch % max(1, epochs // 20) == 0 or epoch == 1


@PLUGINS.register("progress", tags=("default",))
class Progress(Plugin):
    """Shows a rich progress bar on a terminal, a live HTML block in a notebook, and plain lines (at most about 20 per run) when output goes to a file or pipe."""

    name = "progress"
    order = 50

    def __init__(self, stream=None):
        self.notebook = stream is None and in_notebook()
        self.stream = stream or sys.stdout
        self.bar = None
        self.view = None

    def applies_to(self, run) -> bool:
        return run.verbose > 0

    def on_start(self, run) -> None:
        self.epochs, self.steps = run.cfg.train.epochs, run.task.steps_per_epoch
        params = [p for m in run.task.modules().values() for p in m.parameters()]
        total = sum(p.numel() for p in {id(p): p for p in params}.values())
        trainable = sum(p.numel() for p in {id(p): p for p in params if p.requires_grad}.values())
        frozen = f", {trainable:,} trainable" if trainable != total else ""
        title = (f"{run.cfg.recipe or run.cfg.task}: model '{run.cfg.model['name']}' with {total:,} parameters{frozen}, "
                 f"{self.epochs} epochs of {self.steps} steps on {run.runtime.describe()}")
        if self.notebook:
            self.view = NotebookView(title, self.epochs, self.steps)
            return
        print(title, file=self.stream, flush=True)
        if self.stream.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self.bar.start()
            self.bar_task = self.bar.add_task("train", total=self.steps, epoch="", info="")

    def on_epoch_start(self, run, epoch: int) -> None:
        self.t0 = time.perf_counter()
        if self.view is not None:
            self.view.epoch_start(epoch + 1)
        if self.bar is not None:
            self.bar.reset(self.bar_task, total=self.steps)
            self.bar.update(self.bar_task, epoch=f"{epoch + 1}/{self.epochs}")

    def on_batch_end(self, run, step: int) -> None:
        if self.view is not None:
            self.view.advance()
        if self.bar is not None:
            self.bar.advance(self.bar_task)

    def on_epoch_end(self, run, logs: dict) -> bool:
        epoch = logs["epoch"]
        seconds = time.perf_counter() - self.t0
        line = f"epoch {epoch}/{self.epochs}  {format_logs(logs)}  ({seconds:.1f}s)"
        if self.view is not None:
            self.view.epoch_end(logs, seconds)
        elif self.bar is not None:
            self.bar.update(self.bar_task, info=format_logs(logs, [k for k in logs if k.startswith("val/")]))
            self.bar.console.print(line)
        elif thinned(epoch, self.epochs):
            print(line, file=self.stream, flush=True)
        return False

    def on_train_end(self, run, logs: dict) -> None:
        if self.view is not None:
            self.view.done()
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class NotebookView:
    """One live HTML block: the run's title, a bar for the current epoch with the time left, a
    small loss chart (train and validation loss per epoch) and a table of the epoch records
    (thinned like the plain log once there are many)."""

    INTERVAL = 0.25  # seconds between two updates within an epoch

    def __init__(self, title: str, epochs: int, steps: int):
        import warnings

        from IPython.display import display

        # huggingface_hub (the model card) imports tqdm.auto, which warns in a kernel without
        # ipywidgets; deepstep shows no tqdm bar, so the warning would only puzzle a learner
        warnings.filterwarnings("ignore", message="IProgress not found")
        self.title, self.epochs, self.steps = title, epochs, steps
        self.epoch, self.step, self.rows = 0, 0, []
        self.t_start = self.last = time.perf_counter()
        self.finished = False
        self.handle = display(self._bundle(), raw=True, display_id=True)

    def epoch_start(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0
        self._show(force=epoch == 1)

    def advance(self) -> None:
        self.step += 1
        self._show()

    def epoch_end(self, logs: dict, seconds: float) -> None:
        self.rows.append({**{k: v for k, v in logs.items() if isinstance(v, float)}, "epoch": logs["epoch"],
                          "seconds": seconds})
        self.step = self.steps
        self._show(force=True)

    def done(self) -> None:
        self.finished = True
        self._show(force=True)

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self.last >= self.INTERVAL:
            self.last = now
            self.handle.update(self._bundle(), raw=True)

    # --- what is drawn ----------------------------------------------------------------------------
    def _timing(self) -> str:
        elapsed = time.perf_counter() - self.t_start
        done = (len(self.rows) + (self.step / self.steps if self.steps and not self.finished else 0))
        if self.finished:
            return f"{len(self.rows)} epochs in {_clock(elapsed)}"
        left = f", about {_clock(elapsed / done * (self.epochs - done))} left" if done > 0.05 else ""
        return f"epoch {self.epoch}/{self.epochs} · step {self.step}/{self.steps} · {_clock(elapsed)}{left}"

    def _shown_rows(self) -> list[dict]:
        n = len(self.rows)
        return [r for i, r in enumerate(self.rows) if i == n - 1 or thinned(r["epoch"], self.epochs)]

    def _bundle(self) -> dict:
        lines = [self.title, self._timing()]
        lines += [f"epoch {r['epoch']}/{self.epochs}  {format_logs({k: v for k, v in r.items() if k != 'seconds'})}"
                  for r in self._shown_rows()]
        return {"text/plain": "\n".join(lines), "text/html": self._html()}

    def _html(self) -> str:
        total = self.epochs * max(self.steps, 1)
        value = total if self.finished else min(total, (max(self.epoch, 1) - 1) * self.steps + self.step)
        keys = list(dict.fromkeys(k for r in self.rows for k in r if k not in ("epoch", "seconds")))
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["epoch", *keys, "s"])
        body = "".join("<tr>" + f"<td>{r['epoch']}</td>" + "".join(
            f"<td>{r[k]:.4g}</td>" if k in r else "<td></td>" for k in keys) + f"<td>{r['seconds']:.{2 if r['seconds'] < 10 else 1}f}</td></tr>"
            for r in self._shown_rows())
        table = (f'<div style="overflow-x:auto;max-height:18em;overflow-y:auto"><table style="font-size:12px">'
                 f"<tr>{head}</tr>{body}</table></div>") if self.rows else ""
        return (f'<div class="deepstep-progress" style="font:13px system-ui,sans-serif;max-width:980px">'
                f"<div><b>{html.escape(self.title)}</b></div>"
                f'<div style="display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin:4px 0">'
                f'<progress max="{total}" value="{value}" style="width:280px;height:14px"></progress>'
                f"<span>{html.escape(self._timing())}</span></div>"
                f'<div style="display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap">'
                f"{loss_svg(self.rows)}{table}</div></div>")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{seconds:.1f} s"


def loss_svg(rows: list[dict], width: int = 300, height: int = 150) -> str:
    """A small inline SVG of train/loss and val/loss per epoch (no matplotlib: drawn every epoch)."""
    keys = [k for k in ("train/loss", "val/loss") if sum(k in r for r in rows) >= 2]
    if not keys:
        return ""
    points = {k: [(r["epoch"], r[k]) for r in rows if k in r and r[k] == r[k] and abs(r[k]) != float("inf")]
              for k in keys}
    xs = [x for p in points.values() for x, _ in p]
    ys = [y for p in points.values() for _, y in p]
    if not ys:
        return ""
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)
    left, right, top, bottom = 44, 8, 16, 20

    def at(x, y):
        return (f"{left + (x - x0) / (x1 - x0) * (width - left - right):.1f},"
                f"{top + (y1 - y) / (y1 - y0) * (height - top - bottom):.1f}")

    colors = {"train/loss": "#1f77b4", "val/loss": "#ff7f0e"}
    lines = "".join(f'<polyline fill="none" stroke="{colors[k]}" stroke-width="2" points="'
                    + " ".join(at(x, y) for x, y in points[k]) + '"/>' for k in keys)
    legend = "".join(f'<text x="{left + 6 + 90 * i}" y="11" fill="{colors[k]}" font-size="11">{k}</text>'
                     for i, k in enumerate(keys))
    axis = (f'<text x="2" y="{top + 8}" font-size="10">{y1:.3g}</text>'
            f'<text x="2" y="{height - bottom}" font-size="10">{y0:.3g}</text>'
            f'<text x="{left}" y="{height - 4}" font-size="10">epoch {x0}</text>'
            f'<text x="{width - right}" y="{height - 4}" font-size="10" text-anchor="end">{x1}</text>'
            f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
            'fill="none" stroke="#ccc"/>')
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'style="background:#fff;font-family:system-ui,sans-serif">{axis}{lines}{legend}</svg>')
