"""Tiny name -> factory registries for datasets, models, heads, losses and optimizers."""
from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry:
    """Maps names to factories; `build` with an unknown name raises ValueError listing the valid ones.

    ``populate`` names a module whose import registers the entries (imported lazily on first use,
    so ``nc_core.registry`` itself imports nothing heavy).
    """

    def __init__(self, kind: str, populate: str | None = None) -> None:
        self.kind = kind
        self.populate = populate
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@REG.register("ce")`` registers the decorated factory under ``name``."""
        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            existing = self._factories.get(name)
            if existing is not None and existing is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered (to {existing!r})")
            self._factories[name] = factory
            return factory
        return deco

    def _load(self) -> None:
        if self.populate is not None:
            importlib.import_module(self.populate)

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered under ``name``."""
        self._load()
        try:
            return self._factories[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered under ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._factories

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._factories)})"


DATASETS = Registry("dataset", populate="nc_core.data.sources")
MODELS = Registry("model", populate="nc_core.models")
HEADS = Registry("head", populate="nc_core.heads")
LOSSES = Registry("loss", populate="nc_core.losses")
OPTIMIZERS = Registry("optimizer", populate="nc_core.training.optim")
