"""The console: Lightning's banners once per run, for the main trainer only."""
import logging
import warnings

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from gensynth_pl.console import LIGHTNING_LOGGERS, QuietTrainer, silence_foreign_warnings

BANNERS = ("GPU available", "TPU available", "Tip:")


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def lightning_messages():
    """Every message Lightning logs during the test (its rank-zero logger is a child of ``lightning.pytorch``)."""
    handler, logger = Collect(), logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def fit_and_validate(trainer_class: type[L.Trainer]) -> None:
    trainer = trainer_class(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    model = BoringModel()
    trainer.fit(model)
    trainer.validate(model, verbose=False)


def test_quiet_trainer_keeps_lightnings_banners_off_and_restores_its_loggers(lightning_messages):
    fit_and_validate(L.Trainer)
    assert all(any(b in m for m in lightning_messages) for b in BANNERS), lightning_messages  # a plain trainer's
    lightning_messages.clear()
    levels = [logging.getLogger(name).level for name in LIGHTNING_LOGGERS]
    fit_and_validate(QuietTrainer)
    assert not [m for m in lightning_messages if any(b in m for b in BANNERS)]
    assert [logging.getLogger(name).level for name in LIGHTNING_LOGGERS] == levels
    fit_and_validate(L.Trainer)  # and the next main trainer announces itself again
    assert any("GPU available" in m for m in lightning_messages)


def test_only_the_foreign_warnings_are_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_foreign_warnings()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("gate.threshold is weak: train the prototype longer (synthesis.prototype_epochs)", UserWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", UserWarning)
    assert [type(w.message) for w in caught] == [UserWarning, UserWarning]
