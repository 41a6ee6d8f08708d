"""``polycnn parity``: every backend against the float64 reference, op by op."""

from __future__ import annotations

import math
import sys

import click

import polycnn as pc
from polycnn import parity as parity_lib

from ._common import echo_json, format_table, json_option


def _names(value: str | None, what: str, allowed=None) -> list:
    if value is None:
        return []
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ValueError(f"--{what} must list at least one name, got {value!r}")
    if allowed is not None:
        bad = [n for n in names if n not in allowed]
        if bad:
            raise ValueError(f"--{what}: unknown {', '.join(map(repr, bad))}; choose from"
                             f" {', '.join(allowed)}")
    return names


#: --cases above this is a typo: 20 cases per op take about a second on a CPU backend
MAX_CASES = 10_000


def _finite(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


@click.command()
@click.option("--backends", "backend_list", default=None, metavar="A,B",
              help="comma-separated backends to check (default: every available backend)")
@click.option("--dtypes", "dtype_list", default=",".join(parity_lib.DTYPES), show_default=True,
              metavar="D,D", help="comma-separated dtypes: float32, float64")
@click.option("--ops", "op_list", default=",".join(parity_lib.OPS), show_default=True,
              metavar="OP,OP", help="comma-separated ops: " + ", ".join(parity_lib.OPS))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="seed of the random cases")
@click.option("--cases", default=20, show_default=True, type=click.IntRange(min=1, max=MAX_CASES),
              help=f"random cases per op, at most {MAX_CASES:,} (fewer for a slow backend such as"
                   " cupy-emu)")
@json_option
def parity(backend_list, dtype_list, op_list, seed, cases, as_json):
    """Check backends against the float64 reference on seeded random cases.

    Every op (conv2d, maxpool2d, avgpool2d), forward and backward (conv: dx, dw, db), in
    float32 and float64. Exit status 1 when any result is off, naming the op, pass, backend,
    dtype and case; 2 for an unknown or unavailable backend.
    """
    dtypes = _names(dtype_list, "dtypes", parity_lib.DTYPES)
    ops = _names(op_list, "ops", parity_lib.OPS)
    skipped = {}
    if backend_list is None:
        names = []
        for name, status in pc.available_backends().items():
            if status is True:
                names.append(name)
            else:
                skipped[name] = status
    else:
        names = _names(backend_list, "backends")
    backends = {name: pc.get_backend(name) for name in names}  # BackendUnavailable: exit 2

    report = parity_lib.run_parity(backends, dtypes=dtypes, seed=seed, cases=cases, ops=ops)

    if as_json:
        obj = report.as_dict()
        obj["skipped"] = skipped
        for row in obj["rows"]:
            row["max_abs_err"] = _finite(row["max_abs_err"])
            row["max_rel_err"] = _finite(row["max_rel_err"])
        echo_json(obj)
    else:
        table = [[r["op"], r["pass"], r["dtype"], r["backend"], r["cases"],
                  f"{r['max_abs_err']:.2e}", f"{r['max_rel_err']:.2e}", f"{r['tolerance']:.0e}",
                  "ok" if r["ok"] else "FAIL"] for r in report.rows]
        click.echo(format_table(["op", "pass", "dtype", "backend", "cases", "max abs err",
                                 "max rel err", "tolerance", "ok"], table))
        for name, reason in skipped.items():
            click.echo(f"not checked: {name}: {' '.join(reason.split())}")
        if report.ok:
            click.echo(f"all results within tolerance ({cases} cases per op, seed {seed})")
    for m in report.mismatches:
        click.echo(m.line(), err=True)
    if not report.ok:
        sys.exit(1)


COMMANDS = [parity]
