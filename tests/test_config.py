"""One source of defaults: the composed config, the schemas and the Python signatures agree."""
import inspect

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gensynth_pl import GenerativeSynthesis, Inquisitor
from gensynth_pl.family import FamilySettings
from gensynth_pl.gates import Requirements
from gensynth_pl.latency import LatencyMeter
from gensynth_pl.importance import MagnitudeImportance, TaylorImportance
from gensynth_pl.metrics import NetScoreUnits

from test_train_cli import ROOT


def signature_defaults(target) -> dict:
    return {n: p.default for n, p in inspect.signature(target).parameters.items() if p.default is not p.empty}


def composed(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_composed_defaults_are_the_python_signatures_defaults():
    cfg = composed()
    synthesis = OmegaConf.to_container(cfg.synthesis, resolve=True)
    inquisitor, units, family = synthesis.pop("inquisitor"), synthesis.pop("netscore_units"), synthesis.pop("family")
    expected = signature_defaults(GenerativeSynthesis)
    for name, value in synthesis.items():
        if name not in ("_target_", "seed"):  # the seed follows the run's top-level seed
            assert value == expected[name], name
    assert synthesis["seed"] == cfg.seed == expected["seed"]
    assert {k: v for k, v in inquisitor.items() if k != "_target_"} == signature_defaults(Inquisitor)
    assert {k: v for k, v in units.items() if k != "_target_"} == signature_defaults(NetScoreUnits)
    assert {k: v for k, v in family.items() if k != "_target_"} == {**signature_defaults(FamilySettings),
                                                                    "targets": list(FamilySettings().targets)}
    gate = {k: v for k, v in OmegaConf.to_container(cfg.gate).items() if k != "_target_"}
    latency = {k: v for k, v in gate.pop("latency").items() if k != "_target_"}
    expected_gate = {**signature_defaults(Requirements), "metrics": []}
    assert expected_gate.pop("latency") == LatencyMeter(**latency) and gate == expected_gate
    callback = instantiate(cfg.synthesis, gate=instantiate(cfg.gate))
    budget = expected["prototype_epochs"] + expected["cycles"] * expected["epochs_per_cycle"] + expected["polish_epochs"]
    assert callback.schedule.total_epochs == budget
    assert callback.loop.inquisitor.step == signature_defaults(Inquisitor)["step"]


def test_the_importance_rule_is_one_override():
    for name, rule in (("taylor", TaylorImportance), ("magnitude", MagnitudeImportance)):
        cfg = composed(f"synthesis.inquisitor.importance={name}")
        assert isinstance(instantiate(cfg.synthesis.inquisitor).importance, rule)
    with pytest.raises(Exception, match="inquisitor.importance='taylr' is unknown"):
        instantiate(composed("synthesis.inquisitor.importance=taylr").synthesis.inquisitor)
