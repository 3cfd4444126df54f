"""A quiet console for the trainers a run makes after its main one.

Lightning announces every Trainer it builds ("GPU available", "TPU available", a litlogger tip) and every fit
("Loading `train_dataloader` to estimate number of stepping batches"). Once, for the main trainer, that says
something; repeated for each family member or benchmark baseline it buries the run's own progress lines. Those
trainers are ``QuietTrainer``s: Lightning's info messages are off while they are built and run, its warnings
stay. Warnings no setting of ours can fix (one dependency using another's deprecated API) are hidden by the entry
points (``silence_foreign_warnings``); every warning of our own names the setting that fixes it.
"""
from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import lightning as L

# the loggers Lightning's rank-zero info messages go through (lightning_utilities routes them to the last one)
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")
# (category, message) of warnings between dependencies that a user can neither fix nor act on
FOREIGN_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)  # Lightning's use of torch


def silence_foreign_warnings() -> None:
    """Hide ``FOREIGN_WARNINGS``; for entry points (``train.py``), not for a library user's own process."""
    for category, message in FOREIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within the block, Lightning logs warnings and errors only; the loggers' levels are restored afterwards."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _quietly(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with quiet_lightning():
            return method(*args, **kwargs)

    return wrapper


class QuietTrainer(L.Trainer):
    """A ``lightning.Trainer`` that runs without Lightning's banners and tips, for the secondary trainers of a run
    (family members, ``gensynth-generate``, benchmark baselines); the caller prints its own progress lines.

    Example:
        >>> trainer = QuietTrainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    """

    __init__ = _quietly(L.Trainer.__init__)
    fit = _quietly(L.Trainer.fit)
    validate = _quietly(L.Trainer.validate)
    test = _quietly(L.Trainer.test)
    predict = _quietly(L.Trainer.predict)
