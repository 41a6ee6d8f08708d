"""Training loop, evaluation and prediction, written once above the backend.

- :func:`fit` (``_loop``): the epochs and steps, checkpoints, callbacks, Ctrl-C, early stopping;
- :func:`evaluate`, :func:`predict` (``_evaluation``);
- ``_inputs``: the checks of data, images and arguments; ``_setup``: fit's set-up and resumed
  state; ``_state``: History and the errors; ``_parallel``: data-parallel training.
"""

from ._evaluation import evaluate, predict
from ._inputs import _check_data, _check_finite, _check_images, _pixel_scaling  # noqa: F401
from ._loop import fit
from ._state import HISTORY_KEYS, History, TrainingDiverged, TrainingInterrupted

__all__ = ["fit", "evaluate", "predict", "History", "TrainingDiverged", "TrainingInterrupted",
           "HISTORY_KEYS"]
