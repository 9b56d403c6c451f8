"""mrt.records: fingerprints, whole-file writes by rename, JSONL logs that survive a kill."""

import json
import os

import pytest

from mrt.records import append_jsonl, fingerprint, read_jsonl, write_atomic


def test_fingerprint_ignores_key_order_and_sees_every_value():
    settings = {"seed": 1, "arm": {"alpha": 0.5, "mode": "dense"}}
    same = {"arm": {"mode": "dense", "alpha": 0.5}, "seed": 1}
    assert fingerprint(settings) == fingerprint(same)
    assert fingerprint(settings) != fingerprint({**settings, "seed": 2})
    assert len(fingerprint(settings)) == 12 and len(fingerprint(settings, length=40)) == 40
    assert fingerprint(settings, length=40).startswith(fingerprint(settings))
    assert fingerprint(b"raw bytes") == fingerprint("raw bytes")  # text and its UTF-8 bytes hash alike


def test_atomic_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "deep" / "results.json"
    assert write_atomic(path, "first\n") == path
    write_atomic(path, "second\n")
    assert path.read_text() == "second\n"
    assert os.listdir(path.parent) == ["results.json"]


def test_failed_atomic_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_atomic(path, "old\n")

    def killed(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(OSError, match="killed"):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["results.json"]


def test_a_torn_last_line_is_dropped_and_the_log_resumes(tmp_path, caplog):
    path = tmp_path / "log" / "records.jsonl"
    assert read_jsonl(path) == []  # no log yet
    append_jsonl(path, {"index": 0}, {"index": 1, "text": "\u00e9"})
    with open(path, "a") as handle:
        handle.write('{"index": 2, "te')  # a kill in the middle of a record
    with caplog.at_level("WARNING", logger="mrt.records"):
        assert read_jsonl(path) == [{"index": 0}, {"index": 1, "text": "\u00e9"}]
    assert "unfinished last record" in caplog.text
    append_jsonl(path, {"index": 2})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2]  # no glued half line
    assert read_jsonl(path) == [{"index": 0}, {"index": 1, "text": "\u00e9"}, {"index": 2}]
