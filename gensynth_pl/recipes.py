"""Recipes (Hydra ``_target_`` configs) read from files: checked against an allow-list before anything runs.

A recipe is code: ``instantiate`` imports and calls whatever its ``_target_`` names. A generator file, a saved
network's ``architecture.json`` and a run's ``.hydra/config.yaml`` may come from someone else, so a recipe they
carry may only name what runs of this package write there: model builders for a prototype; this package's data
modules and tasks, torch's optimizers and schedulers for a run. Every ``_target_`` in a recipe (nested ones, in
``_args_``, lists and dict values, ``_partial_`` or not) is checked before anything is instantiated, and what is
instantiated is the checked recipe itself (resolved to plain data first). A target is found the way Hydra finds
it, but only inside its allowed package: the package is matched as a string before anything is imported, every
step of the path must be the module of that name, and the object found must be one the package's entry accepts
(e.g. a registered torchvision or timm builder, an ``nn.Module`` class defined in the package). A prototype recipe
also may not point a builder at other files or downloads (``pretrained``, ``weights``, ``checkpoint_path``... must
be empty; no string argument may hold a path, URL or hub name): the weights come from the file itself.

Users vouch for more with ``trusted_targets`` (exact dotted names) or ``trust_recipe`` (every recipe of the file).
"""
from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

HYDRA_KEYS = {"_target_", "_args_", "_partial_", "_convert_", "_recursive_"}
_DOTTED = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
# no builder is named like these; a name that is refuses even when its package is allowed
_LOADER_WORDS = ("load", "save", "url", "download", "hub", "open", "exec", "eval", "system", "pickle", "import",
                 "compile", "spawn", "popen", "shell", "write", "remove", "unlink", "rmtree", "attr", "partial",
                 "instantiate")
# prototype arguments that fetch weights or read files; they must be empty (None or False; numbers are rates)
_FETCHING = re.compile(r"(^|_)(pretrained|weights|checkpoint|ckpt|file|path|url|dir|cache|hub|download|repo)(_|$)")
_NOT_FETCHING = {"init_weights"}  # torchvision's flag to initialise weights randomly
_LOCATION = re.compile(r"[/\\:~]")  # paths, URLs, hub and local-dir model names


class UntrustedRecipeError(ValueError):
    """A recipe in a file names something outside the allow-list; nothing was run."""


@dataclass(frozen=True)
class Allowed:
    """Targets a recipe may name: inside ``package`` (a dotted prefix, checked before any import), and accepted by
    ``accepts`` once found."""

    package: str
    description: str
    accepts: Callable[[Any], bool]


def _defined_in(obj: Any, package: str) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == package or module.startswith(package + ".")


def _subclass(obj: Any, base: str) -> bool:
    module, name = base.rsplit(".", 1)
    return inspect.isclass(obj) and issubclass(obj, getattr(importlib.import_module(module), name))


def _module_class(package: str) -> Callable[[Any], bool]:
    return lambda obj: _subclass(obj, "torch.nn.Module") and _defined_in(obj, package)


def _exported(package: str, base: str | None = None) -> Callable[[Any], bool]:
    """What ``package`` exports in ``__all__`` (optionally only subclasses of ``base``)."""

    def accepts(obj: Any) -> bool:
        module = importlib.import_module(package)
        return any(obj is getattr(module, name) for name in module.__all__) and (base is None or _subclass(obj, base))

    return accepts


def _one_of(*names: str) -> Callable[[Any], bool]:
    return lambda obj: any(obj is _attribute(name) for name in names)


def _attribute(dotted: str) -> Any:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _torchvision_model(obj: Any) -> bool:
    import torchvision.models as models

    builders = (models.get_model_builder(name) for name in models.list_models())
    return any(obj is builder for builder in builders) or _module_class("torchvision.models")(obj)


def _timm_model(obj: Any) -> bool:
    import timm

    if obj is timm.create_model or _module_class("timm")(obj):
        return True
    name = getattr(obj, "__name__", "")
    return inspect.isfunction(obj) and timm.is_model(name) and timm.models.model_entrypoint(name) is obj


ALLOWED: dict[str, tuple[Allowed, ...]] = {
    "prototype": (
        Allowed("gensynth_pl.models", "this package's model factories (gensynth_pl.models)", _exported("gensynth_pl.models")),
        Allowed("segmentation_models_pytorch", "segmentation-models-pytorch architectures",
                _module_class("segmentation_models_pytorch")),
        Allowed("torchvision.models", "torchvision model builders", _torchvision_model),
        Allowed("timm", "timm.create_model and timm's model builders", _timm_model),
        Allowed("torch.nn", "torch.nn layers (e.g. an activation)", _module_class("torch.nn")),
    ),
    "data": (Allowed("gensynth_pl.data", "this package's data modules (gensynth_pl.data)",
                     _exported("gensynth_pl.data", "lightning.LightningDataModule")),),
    "task": (Allowed("gensynth_pl.tasks", "this package's tasks (gensynth_pl.tasks)", _exported("gensynth_pl.tasks")),),
    "optimizer": (
        Allowed("torch.optim", "torch.optim optimizers",
                lambda obj: _subclass(obj, "torch.optim.Optimizer") and _defined_in(obj, "torch.optim")),
        Allowed("gensynth_pl.module", "gensynth_pl.module.sgd", _one_of("gensynth_pl.module.sgd")),
    ),
    "scheduler": (
        Allowed("torch.optim.lr_scheduler", "torch.optim.lr_scheduler schedulers",
                lambda obj: _subclass(obj, "torch.optim.lr_scheduler.LRScheduler")
                and _defined_in(obj, "torch.optim.lr_scheduler")),
        Allowed("gensynth_pl.module", "gensynth_pl.module.cosine_per_phase", _one_of("gensynth_pl.module.cosine_per_phase")),
    ),
}


def instantiate_trusted(
    config: Any,
    what: str,
    source: str | Path,
    trusted_targets: Iterable[str] = (),
    trust_recipe: bool = False,
) -> Any:
    """Instantiate the ``what`` recipe (a key of ``ALLOWED``: prototype, data, task, optimizer, scheduler) read from
    ``source``, once ``check_recipe`` passes it; ``trust_recipe`` instantiates it unchecked."""
    if trust_recipe:
        return instantiate(config)
    plain = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config
    check_recipe(plain, what, source, trusted_targets)
    return instantiate(plain)


def check_recipe(config: Any, what: str, source: str | Path, trusted_targets: Iterable[str] = ()) -> None:
    """Raise ``UntrustedRecipeError`` unless every target in ``config`` (plain data) is allowed for ``what`` or
    named in ``trusted_targets``; imports nothing outside the allowed packages."""
    if what not in ALLOWED:
        raise ValueError(f"what={what!r}: recipes are checked as one of {sorted(ALLOWED)}")
    trusted = set(trusted_targets)
    if not all(isinstance(name, str) for name in trusted):
        raise TypeError(f"trusted_targets must be dotted names (strings), got {sorted(map(repr, trusted))}")
    _Check(what, str(source), trusted).walk(config, what, strict=True)


@dataclass
class _Check:
    what: str
    source: str
    trusted: set[str]

    def refuse(self, where: str, target: Any, reason: str, nameable: bool = True) -> UntrustedRecipeError:
        """The refusal: what, where and why, what may be named, and how to trust the file (by ``target``'s name
        when ``nameable``)."""
        allowed = "; ".join(entry.description for entry in ALLOWED[self.what])
        ways = [f"allow the target with trusted_targets=['{target}'] (gensynth-generate / gensynth-export: "
                f"trusted_targets='[{target}]')"] if nameable else []
        ways.append("trust every recipe in it with trust_recipe=true")
        if self.what == "prototype":
            ways.append("pass the prototype module yourself (Generator.load(path, prototype), load_network(folder, "
                        "prototype), build_family(..., prototype=...))")
        return UntrustedRecipeError(
            f"{self.source}: the {self.what} recipe has {target!r} at {where} ({reason}); nothing was run. A "
            f"{self.what} recipe in a file may only name: {allowed}. If you trust this file: {', or '.join(ways)}. "
            "See docs/guides/trusting-files.md."
        )

    def walk(self, node: Any, where: str, strict: bool, owner: Any = None) -> None:
        """Check every target under ``node``. ``strict``: under an allow-listed target (not a user-trusted one),
        whose arguments in a prototype recipe may not fetch weights or name locations; ``owner``: that target."""
        if isinstance(node, dict):
            if not all(isinstance(key, str) for key in node):
                raise self.refuse(where, list(node), "dict keys must be strings", nameable=False)
            if "_target_" in node:
                strict, owner = self.target(node, where), node["_target_"]
            for key, value in node.items():
                if key == "_target_":
                    continue
                if strict and self.what == "prototype" and key not in HYDRA_KEYS and _fetches(key, value):
                    raise self.refuse(f"{where}.{key}", owner, f"argument {key}={value!r} would fetch or read weights; "
                                                               "the file's own weights are loaded instead")
                self.walk(value, f"{where}.{key}", strict, owner)
        elif isinstance(node, (list, tuple)):
            for index, item in enumerate(node):
                self.walk(item, f"{where}[{index}]", strict, owner)
        elif isinstance(node, str):
            if "${" in node:  # Hydra resolves interpolations again when it instantiates: none may be left
                raise self.refuse(where, node, "an unresolved interpolation", nameable=False)
            if strict and self.what == "prototype" and _LOCATION.search(node):
                raise self.refuse(where, owner, f"argument {node!r} is a path, URL or hub name")
        elif not isinstance(node, (int, float, bool, type(None))):
            raise self.refuse(where, node, f"a {type(node).__name__}, not plain data", nameable=False)

    def target(self, node: dict, where: str) -> bool:
        """Check one ``_target_``; returns whether its arguments are held to the allow-list's rules."""
        target = node["_target_"]
        where = f"{where}._target_"
        if not isinstance(target, str):
            raise self.refuse(where, target, "a target must be a dotted name", nameable=False)
        if target in self.trusted:
            return False
        if not _DOTTED.fullmatch(target):
            raise self.refuse(where, target, "not a dotted name of public parts")
        if "_partial_" in node and not isinstance(node["_partial_"], bool):
            raise self.refuse(where, target, "_partial_ must be true or false")
        entry = next((a for a in ALLOWED[self.what] if target == a.package or target.startswith(a.package + ".")), None)
        if entry is None:
            raise self.refuse(where, target, "outside the allowed packages")
        word = next((w for w in _LOADER_WORDS if any(w in part.lower() for part in target.split("."))), None)
        if word:
            raise self.refuse(where, target, f"its name contains '{word}', as loaders and code runners' names do")
        obj = self.locate(target, where)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not entry.accepts(obj):
            raise self.refuse(where, target, f"not one of {entry.description}")
        return True

    def locate(self, target: str, where: str) -> Any:
        """Find ``target`` as Hydra does (import the first part, then attributes, importing submodules that are not
        attributes yet), requiring every step but the last to be the module of exactly that name: no path through
        a module re-exported under another name (``gensynth_pl.models.segmentation.torch``)."""
        parts = target.split(".")
        try:
            obj: Any = importlib.import_module(parts[0])
            for index in range(1, len(parts)):
                prefix = ".".join(parts[:index])
                if not isinstance(obj, ModuleType) or obj.__name__ != prefix:
                    raise self.refuse(where, target, f"'{prefix}' is not the module of that name")
                obj = getattr(obj, parts[index]) if hasattr(obj, parts[index]) else importlib.import_module(
                    ".".join(parts[: index + 1]))
        except ImportError as error:
            raise self.refuse(where, target, f"cannot be found: {error}") from error
        return obj


def _fetches(key: str, value: Any) -> bool:
    """An argument named for weights, files or downloads that is set (None, False and numbers, e.g. drop_path_rate,
    are not)."""
    empty = value is None or value is False or (isinstance(value, (int, float)) and not isinstance(value, bool))
    return bool(_FETCHING.search(key.lower())) and key not in _NOT_FETCHING and not empty
