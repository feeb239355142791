"""The one registry: models, data sets, tasks and recipes. `deepstep list`, the tests and the
report all read it; registering a name twice is an error."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import UserError, unknown


class Registry:
    """Name -> object, with a one-line description each."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._about: dict[str, str] = {}
        self._tags: dict[str, frozenset[str]] = {}
        self._checks: dict[str, dict[str, str]] = {}

    def register(self, name: str, about: str = "", tags: tuple[str, ...] | set[str] = (),
                 checks: dict[str, str] | None = None) -> Callable:
        """Decorator: register `obj` under `name`. `about` defaults to the first paragraph of its
        docstring; `tags` declare capabilities (e.g. a model's "classifier", a task's "predict");
        `checks` the range of a model factory's numeric options, {"dropout": "[0, 1)"} (the
        syntax of `config.Check`), checked with the config before anything is built."""

        def deco(obj):
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            self._about[name] = about or first_sentence(inspect.getdoc(obj) or "")
            self._tags[name] = frozenset(tags)
            self._checks[name] = dict(checks or {})
            return obj

        return deco

    def checks(self, name: str) -> dict[str, str]:
        """The declared ranges of `name`'s options ({} when none were declared)."""
        self.get(name)
        return self._checks[name]

    def tags(self, name: str) -> frozenset[str]:
        """The capability tags `name` was registered with."""
        self.get(name)
        return self._tags[name]

    def has(self, name: str, tag: str) -> bool:
        """Whether `name` is registered and carries `tag`."""
        return name in self and tag in self._tags[name]

    def tagged(self, tag: str) -> list[str]:
        """Names carrying `tag`, sorted."""
        return [n for n in self.names() if tag in self._tags[n]]

    def get(self, name: str):
        load_all()
        if name not in self._items:
            raise unknown(self.kind, name, self._items)
        return self._items[name]

    def about(self, name: str) -> str:
        return self._about[name]

    def names(self) -> list[str]:
        load_all()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        load_all()
        return name in self._items


MODELS = Registry("model")
DATASETS = Registry("data set")
TASKS = Registry("task")
PLUGINS = Registry("plug-in")


def first_sentence(doc: str) -> str:
    """The first paragraph of a docstring, joined into one line (what `deepstep list` prints)."""
    para = doc.strip().split("\n\n")[0]
    return " ".join(line.strip() for line in para.splitlines())

_loaded = False


def load_all() -> None:
    """Import the packages whose modules register themselves."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg in ("deepstep.models", "deepstep.data", "deepstep.tasks", "deepstep.tasks.rl"):
        importlib.import_module(pkg)
    # plug-ins: every module of the package registers itself, so a new plug-in is one new file
    plugins = importlib.import_module("deepstep.plugins")
    for info in pkgutil.iter_modules(plugins.__path__):
        importlib.import_module(f"deepstep.plugins.{info.name}")


def recipe_paths() -> dict[str, Path]:
    """Built-in recipes: name -> TOML file."""
    folder = resources.files("deepstep") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def recipe_path(name: str) -> Path:
    """A built-in recipe by name, or a path to a user's TOML file."""
    paths = recipe_paths()
    if name in paths:
        return paths[name]
    if name.endswith(".toml"):
        p = Path(name)
        if not p.is_file():
            raise UserError(f"Recipe file '{name}' does not exist.")
        return p
    raise unknown("recipe", name, paths)


def model_options(name: str) -> dict[str, inspect.Parameter]:
    """The configurable keyword-only arguments of a model factory: its signature is its typed
    config. Positional arguments (`in_shape`, `num_classes`) come from the data, not the config."""
    sig = inspect.signature(MODELS.get(name))
    return {k: p for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}


