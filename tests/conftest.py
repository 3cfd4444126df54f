import os

import lightning as L
import pytest
import torch

from gensynth_pl.data import SyntheticDataModule
from gensynth_pl.models import cifar_resnet

os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(2)

TINY_SHAPE = (3, 16, 16)


@pytest.fixture
def tiny_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return cifar_resnet(depth=8, width=8, num_classes=4)


@pytest.fixture
def tiny_data() -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=4, image_size=16, train_size=256, val_size=128, noise=0.5, batch_size=32)


def quiet_trainer(max_epochs: int, callbacks: list, **kwargs) -> L.Trainer:
    """A CPU trainer without logger, checkpoints or progress output, for fast tests."""
    settings = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return L.Trainer(max_epochs=max_epochs, callbacks=callbacks, enable_model_summary=False, **{**settings, **kwargs})
