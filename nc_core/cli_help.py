"""Help screens of both CLIs: on/off flags show no `<bool>` value column (they take no value)."""
from __future__ import annotations

import functools

from typer.core import TyperOption


def plain_flags() -> None:
    """Make typer's rich help leave the type column of flag options (--once, --resume/--no-resume, --help)
    empty instead of `<bool>`, which reads as if they took a value. Idempotent; called by each CLI's main()."""
    show = TyperOption.display_type_rich
    if getattr(show, "plain_flags", False):
        return

    @functools.wraps(show)
    def display_type_rich(self: TyperOption, ctx):  # noqa: ANN001, ANN202 - typer's signature
        return None if self.is_flag else show(self, ctx)

    display_type_rich.plain_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
