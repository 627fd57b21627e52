"""Placeholder for commands registered in the CLI but not built yet."""

from __future__ import annotations

import click

from ..errors import GradienceError


class NotBuiltError(GradienceError):
    pass


def unbuilt(name: str, summary: str) -> click.Command:
    @click.command(name=name, help=f"{summary}\n\nNot built yet in this release.",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.pass_context
    def _cmd(ctx: click.Context) -> None:
        raise NotBuiltError(f"`gradience {name}` is not built yet in this release",
                            hint="see the README for the commands available now")

    return _cmd
