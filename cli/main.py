"""The ``polycnn`` command: a click group; each command lives in its own module."""

from __future__ import annotations

import click

from polycnn import __version__

from ._common import PolycnnGroup


@click.group(cls=PolycnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="polycnn")
def main():
    """polycnn: convolutional networks on interchangeable backends (NumPy, Numba, CUDA)."""


def _register() -> None:
    from . import ops

    for command in ops.COMMANDS:
        main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
