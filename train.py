"""Run generative synthesis: `python train.py [group=option ...] [key=value ...]` (see conf/)."""
import hydra
from omegaconf import DictConfig

from gensynth_pl.console import silence_foreign_warnings
from gensynth_pl.pipeline import synthesize


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the best passing network's NetScore (what a sweeper maximises); -inf if none passed."""
    silence_foreign_warnings()
    record, _ = synthesize(cfg)
    return record.best.netscore if record.best and record.best.gate_passed else float("-inf")


if __name__ == "__main__":
    main()
