"""The model-zoo checks on a tiny network that combines what broke on first try (a grouped convolution, a
concatenation, a channels-last ConvNeXt block); the full zoo of shipped models runs as a benchmark
(``python -m benchmarks.model_zoo``) and as the slow test here."""
import pytest
import torch
import torchvision
from torch import nn

from benchmarks import model_zoo
from benchmarks.model_zoo import CHECKS, ZooModel, check_model, summarize
from test_architectures import OutputReshape


class MixedNet(nn.Module):
    """A grouped convolution whose output is concatenated with its input, then a ConvNeXt block (depthwise conv,
    channels-last LayerNorm, layer scale) and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
        self.mix = nn.Conv2d(32, 16, 1)
        self.block = torchvision.models.convnext.CNBlock(16, layer_scale=0.5, stochastic_depth_prob=0.0)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        stem = self.stem(x)
        return self.fc(self.block(self.mix(torch.cat([stem, self.grouped(stem)], 1))).mean((2, 3)))


def test_every_check_passes_on_a_network_with_grouped_convolutions_concatenations_and_layernorm(tmp_path):
    row = check_model(ZooModel("mixed", MixedNet, (3, 16, 16)), tmp_path, repeats=2, rounds=1)
    assert {check: row["checks"][check] for check in CHECKS[:-1]} == {check: "pass" for check in CHECKS[:-1]}, row["causes"]
    assert row["checks"]["faster"] in ("pass", "fail")  # timed at this size, the verdict is the machine's
    for name, fraction in model_zoo.TARGETS.items():
        assert row[name]["macs"] < row["macs"] and row[name]["params"] < row["params"]
        assert abs(row[name]["macs"] / row["macs"] - fraction) < 0.1, (name, row[name]["macs"] / row["macs"])
        assert row["speedup"][name] > 0
    assert all(difference <= 1e-4 * 10 for difference in row["onnx_max_difference"].values())
    assert "mixed" in summarize([row])


def test_a_failing_check_is_a_row_with_its_cause_and_the_rest_skipped(tmp_path):
    row = check_model(ZooModel("hard-coded width", lambda: OutputReshape(hard_coded=True), (3, 4, 4)), tmp_path, 2, 1)
    assert row["checks"]["trace"] == "fail" and not row["passed"]
    assert "output_layers=['features']" in row["causes"]["trace"]
    assert all(row["checks"][check] == "skipped" for check in CHECKS[1:])
    assert "hard-coded width trace: ValueError" in summarize([row])


@pytest.mark.slow
def test_at_least_nine_in_ten_shipped_models_pass_every_check(tmp_path):
    result = model_zoo.main(["--output", str(tmp_path / "zoo.json"), "--repeats", "10"])
    rows = result["rows"]
    assert sum(row["passed"] for row in rows) >= 0.9 * len(rows), result["table"]
