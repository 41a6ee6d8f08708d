"""``polycnn backends``, ``polycnn demo`` and ``polycnn parity``: the op level, for users."""

from __future__ import annotations

import click

import polycnn as pc
from polycnn.backends import registry

from ._common import echo_json, format_table, json_option


@click.command()
@json_option
def backends(as_json):
    """List every backend: available or why not, version, threads, device."""
    rows = []
    default = pc.default_backend_name()
    for name, status in pc.available_backends().items():
        row = {"backend": name, "available": status is True, "default": name == default,
               "summary": registry.summary(name)}
        if status is True:
            row.update(pc.get_backend(name).info())
        else:
            row["reason"] = status
        rows.append(row)
    if as_json:
        echo_json({"backends": rows})
        return
    table = []
    for r in rows:
        mark = "yes" + (" (default)" if r["default"] else "") if r["available"] else "no"
        table.append([r["backend"], mark, r.get("version", "-"), r.get("threads") or "-",
                      r.get("device", "-"), r["summary"]])
    click.echo(format_table(["backend", "available", "version", "threads", "device", "what"], table))
    for r in rows:
        if not r["available"]:
            click.echo(f"\n{r['backend']}: unavailable: {r['reason']}")


COMMANDS = [backends]
