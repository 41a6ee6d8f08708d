"""What every command shares: the backend option, one-line errors with exit code 2, JSON output."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import tempfile

import click

from polycnn.errors import BackendUnavailable

#: errors that are the user's input, not a bug: one line on stderr, exit 2, no traceback
USER_ERRORS = (ValueError, TypeError, BackendUnavailable, OSError, KeyError)


def fail(message: str, code: int = 2):
    """``error: <message>`` as one line on stderr, then exit ``code`` (2: bad input)."""
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def _click_error(exc: click.ClickException):
    """click's own errors (a bad option value, an unknown option or command, a missing
    argument) as one line too, instead of its usage block: exit 2 for usage, 1 otherwise."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        exc.show()   # NOTE: `polycnn` alone prints the help, as click does
        sys.exit(exc.exit_code)
    message = exc.format_message()
    if isinstance(exc, click.UsageError) and not isinstance(exc, click.BadParameter) \
            and exc.ctx is not None and exc.ctx.info_name:
        message += f" (see `{exc.ctx.command_path} --help`)"
    fail(message, exc.exit_code)


class PolycnnGroup(click.Group):
    """A click group that turns bad input into ``error: <message>`` and exit code 2, and Ctrl-C
    into ``interrupted`` and exit code 130, without a traceback."""

    def make_context(self, *args, **kwargs):
        # NOTE: the group's own options (`polycnn --bogus`) are parsed here, outside invoke
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as exc:
            _click_error(exc)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # NOTE: commands that can save work (train) catch it first and say where it is
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            _click_error(exc)
        except USER_ERRORS as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            if isinstance(exc, KeyError):
                message = f"missing key {message}"
            fail(message)


def _known_backend(ctx, param, value):
    """An unknown --backend name fails while the options are parsed, before any work; whether
    a known backend is available here is get_backend's to say (with the reason)."""
    from polycnn.backends import registry

    if value is not None and value not in registry.backend_names():
        raise click.BadParameter(f"unknown backend {value!r}; choose from"
                                 f" {', '.join(registry.backend_names())} (see `polycnn backends`)")
    return value


def backend_option(func):
    """``--backend NAME``; default: the fastest CPU backend available here."""
    return click.option(
        "--backend", "backend", default=None, metavar="NAME", callback=_known_backend,
        help="backend to run on (default: the fastest available CPU backend; see `polycnn backends`)",
    )(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True,
                        help="print one JSON object on stdout, for scripts")(func)


def echo_json(obj) -> None:
    """One line of strict JSON: NaN and infinities (no JSON values) become null."""
    click.echo(json.dumps(_finite(obj), indent=None, sort_keys=False, default=_json_default,
                          allow_nan=False))


def _finite(o):
    import numpy as np

    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    return o


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


def check_output_file(path: str, option: str = "--out", make_folders: bool = False) -> None:
    """Before any work: ``path`` can be written as a file: not empty, its folder exists (or,
    with ``make_folders``, can be made) and takes new files, and it is not a folder, device,
    FIFO or socket (replacing one of those with a file would be wrong, and as root it would
    succeed). Whether an existing file may be replaced is the caller's rule. Raises
    ``click.BadParameter`` naming ``option``."""
    if not path or not path.strip():
        raise click.BadParameter("is empty; expected a file name", param_hint=option)
    folder = os.path.dirname(os.path.abspath(path))
    if make_folders and not os.path.exists(folder):
        check_output_folder(folder, option)
        return
    if not os.path.exists(folder):
        raise click.BadParameter(f"{path}: the folder {folder} does not exist", param_hint=option)
    if not os.path.isdir(folder):
        raise click.BadParameter(f"{path}: {folder} is not a folder", param_hint=option)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror}", param_hint=option) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise click.BadParameter(f"{path} is {kind}; expected a file name", param_hint=option)
    _probe_writable(path if st is None and not os.path.islink(path) else None, folder, option, path)


def check_output_folder(path: str, option: str = "--out") -> None:
    """Before any work: ``path`` is, or can be made, a folder that takes new files (missing
    parents are created later, as ``mkdir -p`` does). Raises ``click.BadParameter``."""
    if not path or not path.strip():
        raise click.BadParameter("is empty; expected a folder name", param_hint=option)
    here = os.path.abspath(path)
    while not os.path.exists(here):
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    if not os.path.isdir(here):
        raise click.BadParameter(f"{path}: {here} is not a folder", param_hint=option)
    _probe_writable(None, here, option, path)


def _probe_writable(name, folder: str, option: str, path: str) -> None:
    """Create and remove a file: ``name`` itself when it does not exist (its length and
    characters are checked too), else a temporary name in ``folder``. os.access cannot tell:
    root passes it on a read-only folder."""
    try:
        if name is not None:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(name)
        else:
            fd, probe = tempfile.mkstemp(prefix=".polycnn-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise click.BadParameter(f"{path}: cannot write there ({exc.strerror})",
                                 param_hint=option) from None
