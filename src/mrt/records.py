"""Files that survive a kill: whole-file writes by rename, JSONL logs that resume, and settings fingerprints."""

import hashlib
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def fingerprint(value, length: int = 12) -> str:
    """A short stable hash of JSON-able settings (keys sorted; other objects by their str)."""
    text = value if isinstance(value, str | bytes) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha1(text.encode() if isinstance(text, str) else text).hexdigest()[:length]


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` under a temporary name, then rename: the file on disk is always whole. The temporary name is
    this process's own, so processes that write the same file never mix their bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves the file as it was, and no temporary file
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL log; a last line cut short by a kill is dropped from the file (with a warning)."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    good = data[:data.rfind(b"\n") + 1]
    if len(good) < len(data):
        logger.warning("Dropping an unfinished last record of %s", path)
        path.write_bytes(good)
    return [json.loads(line) for line in good.decode().splitlines() if line.strip()]


def read_records(path: str | os.PathLike, fingerprint: str) -> dict[int, dict]:
    """The records of a resumable JSONL log by their "index", all made with the settings that `fingerprint` names
    (each record carries its own): a record made with other settings is an error."""
    records = {}
    for record in read_jsonl(path):
        if record["fingerprint"] != fingerprint:
            raise ValueError(f"{path} holds records made with other settings (fingerprint "
                             f"{record['fingerprint']}, now {fingerprint}); use another output_dir or delete it.")
        records[record["index"]] = record
    return records


def append_jsonl(path: str | os.PathLike, *records: dict) -> None:
    """Append records to a JSONL log and flush them to disk before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        handle.flush()
        os.fsync(handle.fileno())
