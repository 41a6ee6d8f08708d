"""Long runs through the API: early stopping, the best-epoch checkpoint and the ETA in the
callback's batch events (the command-line side is in test_long_run_cli.py)."""

from __future__ import annotations

import pytest

import polycnn as pc
from polycnn.checkpoint import read
from polycnn.training import History


class Frozen(pc.SGD):
    """An optimiser that never changes the weights: the validation loss stays exactly the same."""

    def _update(self, p, state, lr):
        pass


def _tiny(seed=0):
    return pc.Sequential(pc.Conv2d(1, 3, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
                         pc.Flatten(), pc.Linear(3 * 8 * 8, 3), backend="numpy", seed=seed)


def _data(n, seed):
    return pc.datasets.shapes(n, image_size=16, channels=1, seed=seed)


@pytest.mark.parametrize("val_loss, best, waited", [
    ([3.0, 2.0, 2.5, 1.9, 2.0, 2.1], 4, 2),
    ([1.0, 1.0, 1.0], 1, 2),                  # equal is not better
    ([2.0, 1.0], 2, 0),
    ([float("nan")] * 3, None, 3),            # no finite loss: every epoch is "not better"
    ([2.0, float("nan"), float("nan")], 1, 2),  # NaN is never better
    ([float("nan"), 2.0, float("inf")], 2, 1),
    ([float("nan"), float("-inf"), 3.0], 3, 0),
    ([], None, 0),
])
def test_history_best_epoch(val_loss, best, waited):
    h = History({"epoch": list(range(1, len(val_loss) + 1)), "val_loss": val_loss})
    assert h.best_epoch() == best
    assert h.epochs_without_improvement() == waited


def test_early_stopping_and_best_checkpoint(tmp_path):
    model = _tiny()
    events = []
    last, best = tmp_path / "last.npz", tmp_path / "best.npz"
    h = pc.fit(model, _data(32, 0), epochs=10, batch_size=16, val=_data(16, 1), seed=0,
               optimizer=Frozen(model.parameters(), lr=0.1), early_stopping=2,
               checkpoint=str(last), best_checkpoint=str(best), callback=events.append)
    # the validation loss never improves after epoch 1: epochs 2 and 3 wait, then it stops
    assert h["epoch"] == [1, 2, 3] and h.stopped_early == 3
    epochs = [e for e in events if e["kind"] == "epoch"]
    assert [e["best"] for e in epochs] == [True, False, False]
    assert [e["stop"] for e in epochs] == [False, False, True]
    assert read(last)[0]["epoch"] == 3 and read(best)[0]["epoch"] == 1

    # resuming a run that stopped early trains nothing more
    again = pc.load(last, backend="numpy")
    h2 = pc.fit(again, _data(32, 0), epochs=10, batch_size=16, val=_data(16, 1), resume=True,
                optimizer=Frozen(again.parameters(), lr=0.1), early_stopping=2)
    assert h2["epoch"] == [1, 2, 3] and h2.stopped_early == 3


def test_best_checkpoint_holds_the_lowest_validation_loss(tmp_path):
    model = _tiny(seed=3)
    best = tmp_path / "best.npz"
    h = pc.fit(model, _data(48, 0), epochs=4, batch_size=16, val=_data(16, 1), seed=0,
               optimizer=pc.SGD(model.parameters(), lr=0.2, momentum=0.9), best_checkpoint=str(best))
    meta = read(best)[0]
    assert meta["epoch"] == h.best_epoch()
    assert meta["metrics"]["val_loss"] == min(h["val_loss"])
    assert h.stopped_early is None and len(h["epoch"]) == 4


def test_eta_in_batch_events():
    model = _tiny()
    events = []
    pc.fit(model, _data(40, 0), epochs=2, batch_size=16, seed=0, callback=events.append)
    batches = [e for e in events if e["kind"] == "batch"]
    assert len(batches) == 6
    assert all(e["eta_s"] >= 0 and e["run_eta_s"] >= e["eta_s"] for e in batches)
    assert [e["eta_s"] == 0 for e in batches] == [False, False, True] * 2
    assert batches[-1]["run_eta_s"] == 0 and batches[2]["run_eta_s"] > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"early_stopping": 2}, "early_stopping needs validation data"),
    ({"best_checkpoint": "b.npz"}, "best_checkpoint needs validation data"),
    ({"early_stopping": 0, "val": True}, "early_stopping must be a positive int"),
])
def test_fit_rejects_bad_long_run_options(kwargs, message):
    if kwargs.pop("val", False):
        kwargs["val"] = _data(8, 1)
    with pytest.raises(ValueError, match=message):
        pc.fit(_tiny(), _data(16, 0), epochs=1, **kwargs)


@pytest.mark.parametrize("val_losses, stopped, best_flags, best_epoch", [
    # patience 2: a NaN or inf validation loss is never better, so it counts as waiting
    ([2.0, float("nan"), float("inf"), 1.0], 3, [True, False, False], 1),
    # no finite loss at all: nothing is ever best, and patience still runs out
    ([float("nan")] * 4, 2, [False, False], None),
    # a finite loss after NaN is an improvement again
    ([float("nan"), 2.0, float("nan"), 1.5], None, [False, True, False, True], 4),
])
def test_nan_validation_loss_is_not_better(val_losses, stopped, best_flags, best_epoch, tmp_path,
                                           monkeypatch):
    import polycnn.training._loop as training   # NOTE: where fit evaluates the validation set

    real_evaluate = training.evaluate
    losses = iter(val_losses)

    def evaluate(model, data, **kwargs):
        return dict(real_evaluate(model, data, **kwargs), loss=next(losses))

    monkeypatch.setattr(training, "evaluate", evaluate)
    model = _tiny()
    events = []
    best = tmp_path / "best.npz"
    h = pc.fit(model, _data(32, 0), epochs=4, batch_size=16, val=_data(16, 1), seed=0,
               early_stopping=2, best_checkpoint=str(best), callback=events.append)
    assert h.stopped_early == stopped
    assert [e["best"] for e in events if e["kind"] == "epoch"] == best_flags
    assert h.best_epoch() == best_epoch
    if best_epoch is None:
        assert not best.exists()
    else:
        assert read(best)[0]["epoch"] == best_epoch
