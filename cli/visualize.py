"""``polycnn visualize CHECKPOINT``: PNG pictures of a trained network (needs matplotlib)."""

from __future__ import annotations

import os

import click
import numpy as np

import polycnn as pc
from polycnn import limits, recipes

from ._common import backend_option, check_output_folder


def _test_split(config, checkpoint: str):
    """The test split of the data set the checkpoint was trained on (as `polycnn evaluate`)."""
    return recipes.splits(config, checkpoint, n_train=None)["test"]


def _input_image(path: str, model, trained) -> np.ndarray:
    """One image (C, H, W) from a .npy file, checked and scaled as `polycnn predict` takes it:
    the run's image shape (any, without a run record), floats normalised as the loader did,
    uint8 pixels converted with the stored scaling, other dtypes and NaN / inf refused."""
    from polycnn.inputs import read_npy_images
    from polycnn.training import _check_images

    config = trained.config
    if not path.lower().endswith(".npy"):
        raise ValueError(f"--input {path}: expected a .npy array (C, H, W) or (1, C, H, W)")
    channels, size = (config.channels, config.image_size) if config is not None else (None, None)
    x = read_npy_images(path, channels, size, what="--input")
    if x.shape[0] != 1:
        raise ValueError(f"--input {path}: {x.shape[0]} images, expected one (C, H, W) or"
                         " (1, C, H, W)")
    if x.dtype.kind == "f":
        x = x.astype(model.dtype)
        if config is not None:
            x = recipes.normalize(x, trained.normalize).astype(model.dtype)   # as the loader scales
    try:
        return _check_images(model, x, "the --input image", pixels=True)[0]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{path}: {exc}") from None


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="folder for the PNG files (default: CHECKPOINT's name with _viz, e.g. shapes_viz/)")
@click.option("--input", "input_path", type=click.Path(dir_okay=False), default=None,
              help="a .npy image (C, H, W) whose feature maps to draw (default: a test image)")
@click.option("--index", type=int, default=0, show_default=True,
              help="which test image's feature maps to draw (when --input is not given)")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="where the checkpoint's data set lives now (default: where it was trained from)")
@backend_option
def visualize(checkpoint, out_dir, input_path, index, data_dir, backend):
    """Draw a trained network: its first layer's filters, the feature maps after every
    convolution / ReLU / pooling layer for one input, the training curves and the confusion
    matrix on the test split. Writes PNG files and prints their paths."""
    from polycnn import viz

    viz.pyplot()  # fail first, in one line, when matplotlib is missing
    trained = recipes.load_trained(checkpoint, backend, data_dir, needs_data=True,
                                   run_optional=True)
    model, config, classes = trained.model, trained.config, trained.classes
    state = model.training_state
    if out_dir is None:
        out_dir = os.path.splitext(checkpoint)[0] + "_viz"
    check_output_folder(out_dir, "--out")
    if index < 0:
        raise click.BadParameter(f"must be >= 0, got {index}", param_hint="--index")
    if input_path is not None and click.get_current_context().get_parameter_source("index") \
            is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("give --input or --index, not both")
    if data_dir is not None:
        dataset = None if config is None else config.dataset
        if dataset is None:
            raise click.BadParameter(f"{checkpoint} does not name its data set (not written by"
                                     " `polycnn train`)", param_hint="--data-dir")
        if dataset in ("shapes", "digits"):
            raise click.BadParameter(f"{checkpoint} was trained on {dataset}, which needs no files",
                                     param_hint="--data-dir")
    test = None
    if config is not None:
        test = _test_split(config, checkpoint)
        recipes.check_eval_batch(model, config, len(test[1]), checkpoint)
    elif input_path is None:
        raise ValueError(f"{checkpoint} does not say which data it was trained on (not written by"
                         " `polycnn train`); pass --input FILE.npy to choose an image")

    # NOTE: every input is checked before the first picture is written
    if input_path is not None:
        x = _input_image(input_path, model, trained)
        limits.check_model(model.layers, checkpoint, x.shape, 1)
        label = f"input {os.path.basename(input_path)}"
    else:
        n = test[0].shape[0]
        if index >= n:
            raise click.BadParameter(f"the test split has {n} images (0..{n - 1}), got {index}",
                                     param_hint="--index")
        x = test[0][index]
        label = f"test image {index}, true class: {classes[int(test[1][index])]}"
    written = [viz.plot_filters(model, os.path.join(out_dir, "filters.png"))]
    probs = pc.predict(model, x[None].astype(model.dtype))[0]
    label += f"; predicted {classes[int(probs.argmax())]} ({probs.max():.0%})"
    written += viz.plot_feature_maps(model, x, out_dir, label=label)

    history = state.get("history")
    if history and history.get("epoch"):
        written.append(viz.plot_history(history, os.path.join(out_dir, "training_curves.png"),
                                        title=f"training curves of {os.path.basename(checkpoint)}"))
    else:
        click.echo(f"note: {checkpoint} has no training history; no training curves", err=True)
    if test is not None:
        r = pc.evaluate(model, (test[0].astype(model.dtype), test[1]),
                        batch_size=recipes.EVAL_BATCH)
        written.append(viz.plot_confusion(r["confusion_matrix"], classes,
                                          os.path.join(out_dir, "confusion_matrix.png"),
                                          title="test split"))
    else:
        click.echo("note: no test split for this checkpoint; no confusion matrix", err=True)
    for path in written:
        click.echo(path)


COMMANDS = [visualize]
