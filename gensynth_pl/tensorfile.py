"""Files of tensors and plain data that cannot carry code: safetensors.

A safetensors file is a JSON header (tensor names, dtypes, shapes, offsets and a string-to-string ``metadata``
table) followed by raw tensor bytes; reading it parses JSON and copies bytes, nothing else. Nested plain data
(dicts, lists, numbers, strings) with tensors inside is stored as the tensors plus one JSON document in the
metadata, where each tensor stands as ``{"__tensor__": <name>}``. Files of older versions (torch pickles) are
still read, with torch's restricted unpickler (``weights_only=True``: tensors and plain data only).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from gensynth_pl.rundir import write_atomic
from gensynth_pl.torch_utils import brief

TENSOR = "__tensor__"
_PLAIN = (str, int, float, bool, type(None))


def is_safetensors(path: str | Path) -> bool:
    """True when the file starts like a safetensors file (a little-endian header length, then a JSON object)."""
    with open(path, "rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < 100_000_000


def save_tensor_file(path: str | Path, data: dict, file_format: str) -> Path:
    """Write ``data`` (plain data and tensors, any nesting; dict keys are strings) atomically as safetensors."""
    tensors: dict[str, Tensor] = {}
    document = _pack(data, "", tensors, set())
    metadata = {"format": file_format, "data": json.dumps(document)}
    return write_atomic(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def load_tensor_file(path: str | Path, file_format: str, fix: str) -> dict:
    """Read a file written by ``save_tensor_file`` with ``file_format``; every problem names the file and ``fix``."""
    metadata, tensors = _read(path, fix)
    found = metadata.get("format")
    if found != file_format:
        raise ValueError(f"{path} has format {found!r}, not {file_format!r}: it is not the file expected here; {fix}")
    try:
        document = json.loads(metadata["data"])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: its metadata holds no readable 'data' entry ({error!r}); {fix}") from error
    if not isinstance(document, dict):
        raise ValueError(f"{path}: its 'data' entry is a {type(document).__name__}, not an object; {fix}")
    return _unpack(document, tensors, path, fix)


def save_state_dict(path: str | Path, weights: dict[str, Tensor]) -> Path:
    """A plain safetensors state dict (readable by any safetensors tool), written atomically."""
    return write_atomic(path, lambda temporary: save_file(_storable(weights), str(temporary), metadata={"format": "pt"}))


def load_state_dict(path: str | Path, fix: str) -> dict[str, Tensor]:
    """A state dict from a safetensors file, or from a torch.save file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {fix}")
    if is_safetensors(path):
        return _read(path, fix)[1]
    weights = load_torch_file(path, fix)
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()):
        raise ValueError(f"{path} holds a {type(weights).__name__}, not a state dict of named tensors; {fix}")
    return weights


def load_torch_file(path: str | Path, fix: str) -> Any:
    """A torch.save file read with ``weights_only=True`` (no code runs); failures name the file and ``fix``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an unpickling refusal, a truncated zip, something else entirely
        raise ValueError(f"{path} cannot be read as tensors and plain data ({brief(error)}); {fix}") from error


def _read(path: str | Path, fix: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is damaged or truncated ({error}); {fix}") from error
    return metadata, tensors


def _storable(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    seen: set[int] = set()
    return {name: _stored(tensor, seen) for name, tensor in weights.items()}


def _stored(tensor: Tensor, seen: set[int]) -> Tensor:
    """A contiguous CPU tensor sharing memory with none stored before it (safetensors stores each on its own)."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
        tensor = tensor.clone()
    seen.add(tensor.untyped_storage().data_ptr())
    return tensor


def _pack(value: Any, where: str, tensors: dict[str, Tensor], seen: set[int]) -> Any:
    if isinstance(value, Tensor):
        if where in tensors:
            raise ValueError(f"two tensors would be stored as '{where}': a key contains '/'")
        tensors[where] = _stored(value, seen)
        return {TENSOR: where}
    if isinstance(value, dict):
        if TENSOR in value or not all(isinstance(key, str) for key in value):
            raise TypeError(f"'{where}': dict keys must be strings other than '{TENSOR}', got {list(value)[:5]}")
        return {key: _pack(item, f"{where}/{key}" if where else key, tensors, seen) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_pack(item, f"{where}/{index}", tensors, seen) for index, item in enumerate(value)]
    if isinstance(value, _PLAIN):
        return value
    raise TypeError(f"'{where}': {type(value).__name__} is neither plain data nor a tensor")


def _unpack(value: Any, tensors: dict[str, Tensor], path: str | Path, fix: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {TENSOR}:
            if value[TENSOR] not in tensors:
                raise ValueError(f"{path} refers to a tensor {value[TENSOR]!r} it does not hold; {fix}")
            return tensors[value[TENSOR]]
        return {key: _unpack(item, tensors, path, fix) for key, item in value.items()}
    if isinstance(value, list):
        return [_unpack(item, tensors, path, fix) for item in value]
    return value
