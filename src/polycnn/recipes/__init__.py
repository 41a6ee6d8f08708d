"""Training recipes: the runs ``polycnn train`` makes, usable from a script.

    import polycnn as pc
    config = pc.recipes.RunConfig.for_dataset("shapes", epochs=2)
    result = pc.run(config, out="shapes.npz")        # trains exactly as `polycnn train --epochs 2`
    result.test["accuracy"], result.history["val_loss"]
    pc.resume("shapes.npz", epochs=4)                  # continues it

:class:`RunConfig` holds every setting of a run and every default of the command line
(per data set: model, epochs, image size; per optimiser: the learning rate); checkpoints store
it as versioned JSON (``{"run_version": 1, ...}``), and the previous release's untyped run
settings are converted when read.
"""

from .config import (DATASET_DEFAULTS, DATASETS, DEFAULT_LR, DEFAULTS, FIXED_SHAPES, MAX_EPOCHS,
                     RUN_VERSION, SCHEDULES, OptionError, RunConfig, check_counts, stored_data)
from .parts import (EVAL_BATCH, build_model, check_eval_batch, check_sizes, default_augment,
                    make_optimizer, make_schedule, normalize, splits, tutorial_network)
from .runner import (RunResult, Trained, best_checkpoint_path, checked_run, default_out,
                     load_trained, resume, run)

__all__ = ["RunConfig", "RunResult", "OptionError", "Trained", "run", "resume", "load_trained",
           "checked_run", "default_augment", "make_schedule", "make_optimizer", "splits",
           "normalize", "tutorial_network", "build_model", "check_sizes", "check_eval_batch",
           "EVAL_BATCH", "check_counts",
           "stored_data", "best_checkpoint_path", "default_out", "DEFAULTS", "DEFAULT_LR",
           "DATASET_DEFAULTS", "DATASETS", "FIXED_SHAPES", "MAX_EPOCHS", "RUN_VERSION",
           "SCHEDULES"]
