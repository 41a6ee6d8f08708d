"""What every command shares: the backend option, one-line errors with exit code 2, JSON output."""

from __future__ import annotations

import json
import sys

import click

from polycnn.errors import BackendUnavailable

#: errors that are the user's input, not a bug: one line on stderr, exit 2, no traceback
USER_ERRORS = (ValueError, TypeError, BackendUnavailable, OSError, KeyError)


class PolycnnGroup(click.Group):
    """A click group that turns bad input into ``error: <message>`` and exit code 2, and Ctrl-C
    into ``interrupted`` and exit code 130, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # NOTE: commands that can save work (train) catch it first and say where it is
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except USER_ERRORS as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            if isinstance(exc, KeyError):
                message = f"missing key {message}"
            click.echo(f"error: {message}", err=True)
            sys.exit(2)


def backend_option(func):
    """``--backend NAME``; default: the fastest CPU backend available here."""
    return click.option(
        "--backend", "backend", default=None, metavar="NAME",
        help="backend to run on (default: the fastest available CPU backend; see `polycnn backends`)",
    )(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True,
                        help="print one JSON object on stdout, for scripts")(func)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=None, sort_keys=False, default=_json_default))


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def format_table(headers, rows) -> str:
    """Left-aligned text columns, one header line and a rule."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
