"""What other parts register beside a family, by its name: router training's denoiser, the harness's call
arguments. Kept out of the family spec so that the core does not import what only they need."""

from __future__ import annotations

from .registry import family_for


class FamilyAdapters(dict):
    """``{family name: adapter}`` with a register function and a lookup by pipeline that names what is missing."""

    def __init__(self, user: str, what: str, register_name: str):
        super().__init__()
        self.user, self.what, self.register_name = user, what, register_name

    def register(self, family_name: str, adapter):
        """Serve pipelines of the family ``family_name`` with ``adapter`` (a class or function); returns it."""
        if not callable(adapter):
            raise ValueError(f"{self.register_name.rsplit('.', 1)[-1]} takes a class or function, got "
                             f"{type(adapter).__name__}")
        self[family_name] = adapter
        return adapter

    def for_pipe(self, pipe):
        """The adapter registered for the family serving ``pipe`` (raises if there is none)."""
        family = family_for(pipe)
        if family.name not in self:
            raise ValueError(f"{self.user} has no {self.what} for the {family.name!r} family; "
                             f"register one with {self.register_name}")
        return self[family.name]
