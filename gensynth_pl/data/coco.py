"""COCO-format detection data: ``<root>/<images>/*`` plus an annotations JSON (``images``, ``annotations``,
``categories``; ``bbox`` is ``[x, y, width, height]`` in pixels). Any number of categories: their ids are
mapped to contiguous labels 0..K-1 in id order. Images without annotations are kept as negatives; crowd
annotations (``iscrowd: 1``) are skipped. Every problem found names the offending entry.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from gensynth_pl.data.common import open_image, require_dir
from gensynth_pl.data.detection import DetectionDataModule, DetectionSample, detection_transforms, transform_sample

BORDER_TOLERANCE = 1.0  # pixels a box may overshoot the image (rounding in exported annotations); it is clipped


@dataclass(frozen=True)
class CocoImage:
    path: Path
    width: int
    height: int
    boxes: Tensor  # (K, 4) xyxy pixels in the original image
    labels: Tensor  # (K,) contiguous labels


@dataclass(frozen=True)
class CocoAnnotations:
    images: list[CocoImage]
    category_ids: list[int]  # label i is category id category_ids[i]
    category_names: list[str]


def _require(entry: dict, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object, got {type(entry).__name__}")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise ValueError(f"{where} lacks the key(s) {missing}")


def _finite_number(value: object) -> bool:
    """A JSON number that is not NaN or infinite (Python's json reads NaN and Infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _inside(file_name: object, where: str) -> PurePath:
    """``file_name`` as a path relative to the images folder that stays inside it (no absolute path, no '..')."""
    relative = PurePosixPath(file_name.replace("\\", "/")) if isinstance(file_name, str) else None
    if relative is None or not file_name or relative.is_absolute() or PureWindowsPath(file_name).drive or ".." in relative.parts:
        raise ValueError(f"{where}: file_name {file_name!r} must be a path inside the images folder (relative, "
                         "without '..'); fix the entry or move the image into the folder")
    return relative


def load_coco(annotation_file: str | Path, image_dir: str | Path) -> CocoAnnotations:
    """Parse and check a COCO annotations file; image files are checked to exist (not yet decoded)."""
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"annotations file '{annotation_file}' does not exist; set data.annotations (relative to data.root)")
    try:
        data = json.loads(annotation_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"annotations file '{annotation_file}' is not valid JSON: {error}") from error
    _require(data, ("images", "annotations", "categories"), f"annotations file '{annotation_file}'")
    categories = data["categories"]
    for index, category in enumerate(categories):
        _require(category, ("id",), f"'{annotation_file}': categories[{index}]")
    category_ids = sorted(int(c["id"]) for c in categories)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    if not category_ids or len(set(category_ids)) != len(category_ids):
        raise ValueError(f"'{annotation_file}': categories must be non-empty with unique ids, got ids {category_ids}")
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}

    images: dict[int, dict] = {}
    for index, image in enumerate(data["images"]):
        where = f"'{annotation_file}': images[{index}]"
        _require(image, ("id", "file_name", "width", "height"), where)
        if image["id"] in images:
            raise ValueError(f"{where}: image id {image['id']} is used twice")
        path = image_dir / _inside(image["file_name"], f"{where} (id={image['id']})")
        if not path.is_file():
            raise FileNotFoundError(f"{where} (id={image['id']}): image file '{path}' does not exist")
        size = [image["width"], image["height"]]
        if not all(_finite_number(v) and v > 0 and float(v).is_integer() for v in size):
            raise ValueError(f"{where} (id={image['id']}): width and height must be positive integers, got {size}")
        images[image["id"]] = {"path": path, "width": int(size[0]), "height": int(size[1]), "boxes": [], "labels": []}

    for index, annotation in enumerate(data["annotations"]):
        where = f"'{annotation_file}': annotations[{index}] (id={annotation.get('id') if isinstance(annotation, dict) else '?'})"
        _require(annotation, ("image_id", "category_id", "bbox"), where)
        if annotation.get("iscrowd", 0):
            continue
        image = images.get(annotation["image_id"])
        if image is None:
            raise ValueError(f"{where}: image_id {annotation['image_id']} is not in 'images'")
        if annotation["category_id"] not in label_of:
            raise ValueError(f"{where}: category_id {annotation['category_id']} is not in 'categories' {category_ids}")
        bbox = annotation["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_finite_number(v) for v in bbox):
            raise ValueError(f"{where}: bbox must be [x, y, width, height] finite numbers, got {bbox!r}; fix or "
                             "remove the annotation")
        x, y, w, h = (float(v) for v in bbox)
        width, height = image["width"], image["height"]
        if w <= 0 or h <= 0:
            raise ValueError(f"{where} (image '{image['path'].name}'): bbox {bbox} has no area")
        if x < -BORDER_TOLERANCE or y < -BORDER_TOLERANCE or x + w > width + BORDER_TOLERANCE or y + h > height + BORDER_TOLERANCE:
            raise ValueError(f"{where}: bbox {bbox} lies outside its {width}x{height} image '{image['path'].name}'")
        image["boxes"].append([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)])
        image["labels"].append(label_of[annotation["category_id"]])

    return CocoAnnotations(
        images=[
            CocoImage(
                image["path"],
                image["width"],
                image["height"],
                torch.tensor(image["boxes"], dtype=torch.float32).reshape(-1, 4),
                torch.tensor(image["labels"], dtype=torch.int64),
            )
            for image in images.values()
        ],
        category_ids=category_ids,
        category_names=[names[i] for i in category_ids],
    )


class CocoDetection(Dataset):
    """The images of a parsed annotations file, transformed with their boxes."""

    def __init__(self, annotations: CocoAnnotations, transform: v2.Compose) -> None:
        self.annotations, self.transform = annotations, transform

    def __len__(self) -> int:
        return len(self.annotations.images)

    def __getitem__(self, index: int) -> DetectionSample:
        entry = self.annotations.images[index]
        image = open_image(entry.path)
        if image.size != (entry.width, entry.height):
            raise ValueError(
                f"image '{entry.path}' is {image.size[0]}x{image.size[1]} but its annotations say "
                f"{entry.width}x{entry.height}; the boxes would not match it"
            )
        return transform_sample(self.transform, image, entry.boxes, entry.labels)


class CocoDetectionDataModule(DetectionDataModule):
    """COCO-format data under ``root``. Validation is ``val_annotations`` if given, else ``val_size`` images
    carved from the training file with ``seed`` (the same split on every machine). A test split, evaluated
    after a synthesis and never used for a decision, is ``test_annotations`` (+ ``test_images``) if given."""

    def __init__(
        self,
        root: str,
        num_classes: int = 1,
        annotations: str = "annotations.json",
        images: str = "images",
        val_annotations: str | None = None,
        val_images: str | None = None,
        test_annotations: str | None = None,
        test_images: str | None = None,
        val_size: int = 34,
        train_subset: int | None = None,
        image_size: int = 256,
        augment: bool = True,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 2,
    ) -> None:
        super().__init__(image_size, batch_size, num_workers, num_classes)
        self.root, self.annotations, self.images = Path(root).expanduser(), annotations, images
        self.val_annotations, self.val_images = val_annotations, val_images or images
        self.test_annotations, self.test_images = test_annotations, test_images or images
        self.val_size, self.train_subset, self.augment, self.seed = val_size, train_subset, augment, seed
        self.category_names: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        root = require_dir(self.root, "COCO-format dataset", "set data.root to the folder holding the images folder and annotations file")
        train = load_coco(root / self.annotations, root / self.images)
        if len(train.category_ids) != self.num_classes:
            raise ValueError(
                f"data.num_classes={self.num_classes} but '{root / self.annotations}' has {len(train.category_ids)} "
                f"categories {train.category_names}; set data.num_classes={len(train.category_ids)}"
            )
        self.category_names = train.category_names
        train_tf, eval_tf = detection_transforms(self.image_size, self.augment), detection_transforms(self.image_size, False)
        if self.test_annotations is not None:
            self.test_set = CocoDetection(self._matching(train, self.test_annotations, self.test_images), eval_tf)
        if self.val_annotations is None:
            self._split(CocoDetection(train, train_tf), CocoDetection(train, eval_tf), self.val_size, self.seed, self.train_subset)
            return
        val = self._matching(train, self.val_annotations, self.val_images)
        train_set = CocoDetection(train, train_tf)
        if self.train_subset is not None:
            if not 0 < self.train_subset <= len(train_set):
                raise ValueError(f"data.train_subset={self.train_subset} must be between 1 and {len(train_set)}")
            train_set = Subset(train_set, range(self.train_subset))
        self.train_set, self.val_set = train_set, CocoDetection(val, eval_tf)

    def _matching(self, train: CocoAnnotations, annotations: str, images: str) -> CocoAnnotations:
        """Another annotations file (validation, test), checked to share the training file's categories."""
        other = load_coco(self.root / annotations, self.root / images)
        if other.category_ids != train.category_ids:
            raise ValueError(
                f"'{self.root / annotations}' has category ids {other.category_ids} but the training file has "
                f"{train.category_ids}; both files must share one category list"
            )
        return other
