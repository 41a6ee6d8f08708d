"""``polycnn backends``, ``polycnn demo`` and ``polycnn parity``: the op level, for users."""

from __future__ import annotations

import click

import polycnn as pc
from polycnn.backends import registry

from ._common import backend_option, check_output_file, echo_json, format_table, json_option


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
    parallel = {"mpi": pc.distributed.mpi_status(), "nccl": pc.distributed.nccl_status()}
    if as_json:
        echo_json({"backends": rows, **parallel})
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
    click.echo(f"\ndata parallel (`mpiexec -n N polycnn train`): MPI {parallel['mpi']};"
               f" NCCL (cupy) {parallel['nccl']}")


@click.command()
@backend_option
@json_option
@click.option("--plot", is_flag=True,
              help="also draw the example as annotated heat maps in a PNG (needs matplotlib)")
@click.option("--out", type=click.Path(dir_okay=False), default="worked_example.png", show_default=True,
              help="where --plot writes its picture")
def demo(backend, as_json, plot, out):
    """The tutorial's worked example, step by step, computed by a backend."""
    from polycnn.tutorial import side_by_side, worked_example

    if plot:
        from polycnn import viz

        viz.pyplot()  # fail first, in one line, when matplotlib is missing
        check_output_file(out, "--out", make_folders=True)   # NOTE: viz makes missing folders
        _only_png_replaced(out)
    elif click.get_current_context().get_parameter_source("out") is \
            click.core.ParameterSource.COMMANDLINE:
        raise click.BadParameter("is where --plot writes its picture; add --plot", param_hint="--out")
    be = pc.get_backend(backend)
    r = worked_example(be)
    if plot:
        viz.plot_worked_example(r, out, backend_name=be.name)
    if as_json:
        extra = {"plot": out} if plot else {}
        echo_json({"backend": be.name, **{k: v.tolist() for k, v in r.items()}, **extra})
        return
    steps = [
        ("A 6x6 greyscale image (255 = white) and one 3x3 filter.",
         [("image", r["image"]), ("kernel", r["kernel"])]),
        ("Slide the filter over every 3x3 patch, multiply element by element and add up\n"
         "(valid convolution, stride 1: 6 - 3 + 1 = 4 outputs per row). ReLU keeps the\n"
         "positive responses and sets the rest to 0.",
         [("convolution (4x4)", r["convolution"]), ("ReLU", r["relu"])]),
        ("Pad the 4x4 feature map back to 6x6 with a border of zeros, then keep the largest\n"
         "value of each 2x2 block (max pooling, stride 2): the top-left block [[0, 0], [0, 155]]\n"
         "gives 155.",
         [("zero-padded (6x6)", r["padded"]), ("2x2 max pool (3x3)", r["maxpool"])]),
    ]
    click.echo(f"The tutorial's worked example, computed by the {be.name!r} backend.\n")
    for i, (text, blocks) in enumerate(steps, 1):
        click.echo(f"{i}. {text}\n")
        click.echo(side_by_side(blocks))
        click.echo()
    if plot:
        click.echo(f"picture of the worked example saved to {out}")


def _only_png_replaced(out: str) -> None:
    """--out may replace an earlier picture, never a file of another kind."""
    import os

    if os.path.exists(out):
        with open(out, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                raise click.BadParameter(f"{out} exists and is not a PNG picture; only a PNG is"
                                         " replaced: choose another name", param_hint="--out")


COMMANDS = [backends, demo]
