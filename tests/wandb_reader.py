"""Reads the history of an offline W&B run from its ``run-*.wandb`` file (wandb ships no reader).

The file is a LevelDB-log-format stream: a 7-byte W&B header, then 32 KiB blocks of records, each with
a 7-byte header (crc32, length, type: full/first/middle/last), holding protobuf ``Record`` messages.
"""
import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER_LEN, BLOCK_LEN, RECORD_HEADER_LEN = 7, 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, offset = [], b"", HEADER_LEN
    while offset + RECORD_HEADER_LEN <= len(data):
        left_in_block = BLOCK_LEN - offset % BLOCK_LEN
        if left_in_block < RECORD_HEADER_LEN:  # zero padding at the end of a block
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + RECORD_HEADER_LEN])
        offset += RECORD_HEADER_LEN
        chunk, offset = data[offset : offset + length], offset + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history(run_dir: Path) -> list[dict]:
    """One dict per logged history row: key -> decoded JSON value."""
    (run_file,) = Path(run_dir).glob("run-*.wandb")
    rows = []
    for record in read_records(run_file):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows
