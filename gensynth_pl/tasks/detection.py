"""Object detection, DetectNet-style: per-grid-cell coverage + box regression, decoded with NMS; mAP gate.

The network's output is ``(N, num_classes + 4, H / stride, W / stride)``: per-class coverage logits, then for
every cell the distances from its centre to the four sides of the box it covers (left, top, right, bottom,
in units of ``stride``). A cell covers a box when its centre lies in the box's central region (the box
scaled by ``center_fraction``); the cell holding the box centre always covers it, so small boxes are never
lost. Where regions overlap, the smaller box claims the cell: its class is the cell's coverage, its sides the
cell's box, so every covering cell decodes to exactly one box.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import batched_nms, sigmoid_focal_loss

Target = dict[str, Tensor]  # "boxes": (K, 4) float xyxy pixels, "labels": (K,) int64 in [0, num_classes)


class DetectionTask:
    name = "detection"

    def __init__(
        self,
        num_classes: int,
        stride: int,
        center_fraction: float = 0.5,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        box_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        checks = {
            "num_classes": num_classes >= 1,
            "stride": stride >= 1,
            "center_fraction": 0 < center_fraction <= 1,
            "score_threshold": 0 <= score_threshold < 1,
            "nms_iou": 0 < nms_iou <= 1,
            "max_detections": max_detections >= 1,
            "box_weight": box_weight >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"task.{name}={locals()[name]} is invalid: need num_classes >= 1, stride >= 1, 0 < center_fraction <= 1, "
                    "0 <= score_threshold < 1, 0 < nms_iou <= 1, max_detections >= 1, box_weight >= 0"
                )
        self.num_classes, self.stride, self.center_fraction = num_classes, stride, center_fraction
        self.score_threshold, self.nms_iou, self.max_detections = score_threshold, nms_iou, max_detections
        self.box_weight, self.focal_alpha, self.focal_gamma = box_weight, focal_alpha, focal_gamma

    # --- grid encoding -------------------------------------------------------------------------------
    def _cell_centres(self, grid: tuple[int, int], device: torch.device) -> Tensor:
        """(H*W, 2) pixel (x, y) centres of the grid cells, row-major."""
        ys = (torch.arange(grid[0], device=device, dtype=torch.float32) + 0.5) * self.stride
        xs = (torch.arange(grid[1], device=device, dtype=torch.float32) + 0.5) * self.stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.flatten(), yy.flatten()], dim=1)

    def encode(self, targets: list[Target], grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """Targets on the output grid: coverage (N, C, H, W) in {0, 1}, box distances (N, 4, H, W) and the
        (N, H, W) mask of cells that cover a box (where the box distances are defined)."""
        device = targets[0]["boxes"].device if targets else torch.device("cpu")
        height, width = grid
        centres = self._cell_centres(grid, device)
        coverage = torch.zeros(len(targets), self.num_classes, height * width, device=device)
        distances = torch.zeros(len(targets), 4, height * width, device=device)
        positive = torch.zeros(len(targets), height * width, dtype=torch.bool, device=device)
        for index, target in enumerate(targets):
            boxes, labels = target["boxes"].float(), target["labels"].long()
            if len(boxes) == 0:
                continue
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(f"target labels {labels.tolist()} are outside 0..{self.num_classes - 1} (task.num_classes)")
            size = boxes[:, 2:] - boxes[:, :2]
            middle = (boxes[:, :2] + boxes[:, 2:]) / 2
            half = size * self.center_fraction / 2
            offset = (centres[:, None, :] - middle[None]).abs()  # (cells, boxes, 2)
            covers = (offset <= half[None]).all(-1)
            centre_cell = (middle / self.stride).floor().long()
            centre_cell[:, 0].clamp_(0, width - 1)
            centre_cell[:, 1].clamp_(0, height - 1)
            covers[centre_cell[:, 1] * width + centre_cell[:, 0], torch.arange(len(boxes), device=device)] = True
            area = size.prod(-1)
            claim = area[None].expand_as(covers).masked_fill(~covers, float("inf")).argmin(1)
            cells = covers.any(1)
            coverage[index, labels[claim[cells]], cells.nonzero().flatten()] = 1.0
            box = boxes[claim[cells]]
            xy = centres[cells]
            distances[index][:, cells] = torch.cat([xy - box[:, :2], box[:, 2:] - xy], dim=1).T / self.stride
            positive[index] = cells
        count = len(targets)
        return coverage.view(count, -1, *grid), distances.view(count, 4, *grid), positive.view(count, *grid)

    def boxes_from_distances(self, distances: Tensor) -> Tensor:
        """(N, 4, H, W) cell-to-side distances -> (N, H*W, 4) xyxy pixel boxes."""
        centres = self._cell_centres(tuple(distances.shape[-2:]), distances.device)
        flat = distances.flatten(2).transpose(1, 2) * self.stride
        return torch.cat([centres - flat[..., :2], centres + flat[..., 2:]], dim=-1)

    def decode_grid(self, coverage: Tensor, distances: Tensor) -> list[dict[str, Tensor]]:
        """Coverage probabilities (N, C, H, W) + box distances -> per-image boxes, scores and labels after NMS."""
        boxes = self.boxes_from_distances(distances)
        detections = []
        for scores, image_boxes in zip(coverage.flatten(2), boxes):
            classes, cells = (scores > self.score_threshold).nonzero(as_tuple=True)
            kept_scores, kept_boxes = scores[classes, cells], image_boxes[cells]
            keep = batched_nms(kept_boxes, kept_scores, classes, self.nms_iou)[: self.max_detections]
            detections.append({"boxes": kept_boxes[keep], "scores": kept_scores[keep], "labels": classes[keep]})
        return detections

    def split(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """Network output -> (coverage logits, box distances)."""
        if outputs.dim() != 4 or outputs.shape[1] != self.num_classes + 4:
            raise ValueError(
                f"detection outputs must be (N, num_classes + 4 = {self.num_classes + 4}, H, W); got {tuple(outputs.shape)}"
            )
        return outputs[:, : self.num_classes], outputs[:, self.num_classes :]

    def decode(self, outputs: Tensor) -> list[dict[str, Tensor]]:
        coverage, distances = self.split(outputs.detach())
        return self.decode_grid(coverage.sigmoid(), distances)

    # --- Task protocol -------------------------------------------------------------------------------
    def loss(self, outputs: Tensor, targets: list[Target]) -> Tensor:
        """Focal loss on coverage + L1 on the box distances of covering cells, both per covering cell."""
        coverage_logits, distances = self.split(outputs)
        if len(targets) != len(outputs):
            raise ValueError(f"{len(targets)} target dicts for a batch of {len(outputs)} images: one dict per image")
        coverage, target_distances, positive = self.encode(targets, tuple(outputs.shape[-2:]))
        normaliser = positive.sum().clamp_min(1).float()
        coverage_loss = sigmoid_focal_loss(
            coverage_logits, coverage, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        ) / normaliser
        mask = positive.unsqueeze(1).expand_as(distances)
        box_loss = F.l1_loss(distances[mask], target_distances[mask], reduction="sum") / normaliser
        return coverage_loss + self.box_weight * box_loss

    def distillation_loss(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """Learning from the prototype's maps: the student's coverage probabilities (at temperature T) matched to
        the teacher's (binary cross-entropy, times T², averaged over cells), and its box distances to the
        teacher's (L1) on the cells the teacher covers."""
        student_coverage, student_boxes = self.split(student)
        teacher_coverage, teacher_boxes = self.split(teacher)
        coverage = F.binary_cross_entropy_with_logits(student_coverage / temperature, torch.sigmoid(teacher_coverage / temperature))
        covered = (teacher_coverage.amax(1, keepdim=True) > 0).expand_as(student_boxes)  # teacher probability > 0.5
        boxes = F.l1_loss(student_boxes[covered], teacher_boxes[covered], reduction="sum") / covered[:, 0].sum().clamp_min(1)
        return coverage * temperature**2 + self.box_weight * boxes

    def metric_inputs(self, outputs: Tensor, targets: list[Target]) -> tuple[list[dict[str, Tensor]], list[Target]]:
        return self.decode(outputs), [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in targets]

    def metrics(self) -> MetricCollection:
        """Logged as ``val/map`` (COCO mAP@[.5:.95]), ``val/map_50``, ``val/map_75``, ``val/mar_100``, ..."""
        return MetricCollection({"map": MeanAveragePrecision(box_format="xyxy", iou_type="bbox")})
