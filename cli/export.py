"""``polycnn export CHECKPOINT OUTPUT``: a checkpoint as ONNX (``.onnx``) or its weights as
safetensors (``.safetensors``); the kind follows the output's extension."""

from __future__ import annotations

import os

import click

import polycnn as pc
from polycnn.interchange import OPSET, export_onnx, save_weights

KINDS = {".onnx": "ONNX model", ".safetensors": "safetensors weights"}


def _input_shape(text: str | None, run: dict | None, checkpoint: str):
    if text is not None:
        try:
            shape = tuple(int(v) for v in text.replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"--input-shape must be C,H,W (three positive ints), got {text!r}")
        return shape
    if not isinstance(run, dict) or "channels" not in run or "image_size" not in run:
        raise ValueError(f"{checkpoint} does not say its input size (not written by `polycnn"
                         " train`); pass --input-shape C,H,W")
    c, size = run["channels"], run["image_size"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (c, size)):
        raise ValueError(f"{checkpoint}: the checkpoint's run settings give channels {c!r:.40} and"
                         f" image_size {size!r:.40}, expected positive ints; pass --input-shape C,H,W")
    return (c, size, size)


def _class_names(meta: dict, run, checkpoint: str):
    names = meta.get("classes") or (run.get("classes") if isinstance(run, dict) else None)
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{checkpoint}: the checkpoint's class names {names!r:.80} are not a list"
                         " of strings")
    return names


@click.command()
@click.argument("checkpoint")
@click.argument("output")
@click.option("--force", is_flag=True, help="overwrite OUTPUT if it exists")
@click.option("--softmax", is_flag=True,
              help="ONNX: end with a softmax (output 'probabilities') instead of the logits")
@click.option("--input-shape", default=None, metavar="C,H,W",
              help="ONNX: one input's shape (default: the size the checkpoint was trained on)")
@click.option("--opset", type=int, default=OPSET, show_default=True,
              help=f"ONNX opset; polycnn writes opset {OPSET} only")
def export(checkpoint, output, force, softmax, input_shape, opset):
    """Write CHECKPOINT as an ONNX model (OUTPUT.onnx: opset 17, dynamic batch size, class names
    and input normalisation in its metadata, the normalisation inside the graph) or its weights
    as OUTPUT.safetensors (names as in the checkpoint: 0.weight, 1.running_mean, ...). Needs
    pip install 'polycnn[onnx]'."""
    ext = os.path.splitext(output)[1].lower()
    if ext not in KINDS:
        raise ValueError(f"{output}: unknown output type {ext or '(no extension)'}; use .onnx"
                         " (an ONNX model) or .safetensors (the weights)")
    if opset != OPSET:
        raise ValueError(f"--opset {opset}: polycnn writes ONNX opset {OPSET} only")
    if ext != ".onnx" and (softmax or input_shape is not None):
        raise ValueError(f"--softmax and --input-shape apply to .onnx output only, not {output}")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{output}: the folder {folder} does not exist")
    if os.path.isdir(output):
        raise IsADirectoryError(f"{output} is a folder; give a file name ending in {ext}")
    if os.path.lexists(output) and not force:
        raise FileExistsError(f"{output} exists; pass --force to overwrite it")
    if os.path.abspath(output) == os.path.abspath(checkpoint):
        raise ValueError(f"{output} is the checkpoint itself; choose another output name")
    model = pc.load(checkpoint, backend="numpy")
    meta = model.training_state["metadata"]
    run = meta.get("run")
    try:
        if ext == ".onnx":
            shape = _input_shape(input_shape, run, checkpoint)
            normalize = run.get("normalize") if isinstance(run, dict) else None
            export_onnx(model, output, shape, class_names=_class_names(meta, run, checkpoint),
                        normalize=normalize, softmax=softmax)
            what = (f"input (batch, {', '.join(map(str, shape))})"
                    f"{' normalised in the graph' if normalize else ''},"
                    f" output {'probabilities' if softmax else 'logits'}")
        else:
            save_weights(model, output)
            what = f"{len(model.named_arrays())} tensors"
    except ImportError as exc:  # NOTE: the missing extra, as one line and exit 2
        raise ValueError(str(exc)) from None
    click.echo(f"wrote {output} ({KINDS[ext]}, {os.path.getsize(output):,} bytes; {what})")


COMMANDS = [export]
