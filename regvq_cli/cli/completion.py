"""`regvq completion SHELL`: print the completion script that Click generates for bash, zsh or fish."""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


def completion_script(shell: str) -> str:
    """The completion script for `shell`, as Click's own shell-completion support writes it."""
    from click.shell_completion import get_completion_class

    from regvq_cli.cli import cli

    cls = get_completion_class(shell)
    return cls(cli, {}, "regvq", "_REGVQ_COMPLETE").source()


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell):
    """Print the shell completion script for SHELL.

    \b
    bash:  regvq completion bash > ~/.local/share/bash-completion/completions/regvq
    zsh:   regvq completion zsh > "${fpath[1]}/_regvq"
    fish:  regvq completion fish > ~/.config/fish/completions/regvq.fish
    """
    click.echo(completion_script(shell), nl=False)
