"""The ``polycnn`` command: a click group; each command lives in its own module."""

from __future__ import annotations

import click

from polycnn import __version__

from ._common import PolycnnGroup


@click.group(cls=PolycnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="polycnn")
def main():
    """polycnn: convolutional networks on interchangeable backends (NumPy, Numba, CUDA)."""


#: modules under cli/ that define ``COMMANDS``, a list of click commands (one line each)
_COMMAND_MODULES = [
    "train",
    "ops",
    "bench",
    "parity",
    "visualize",
    "export",
]


def _register() -> None:
    import importlib

    for module in _COMMAND_MODULES:
        for command in importlib.import_module(f"{__package__}.{module}").COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
