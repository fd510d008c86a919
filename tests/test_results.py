"""Results files survive crashes, full disks and concurrent writers without losing a row."""

import errno
import json
import multiprocessing
import os

import pytest

from slmbench.results import ResultsError, append_row, read_rows


def test_torn_last_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "r.jsonl"
    append_row(path, {"n": 1})
    append_row(path, {"n": 2})
    with open(path, "ab") as f:
        f.write(b'{"n": 3, "metr')  # power loss mid-row
    with pytest.warns(UserWarning, match="torn"):
        assert [r["n"] for r in read_rows([path])] == [1, 2]
    append_row(path, {"n": 4})  # the next row must not be glued to the torn one
    with pytest.warns(UserWarning):
        assert [r["n"] for r in read_rows([path])] == [1, 2, 4]


def test_disk_full_keeps_earlier_rows_and_leaves_no_partial_row(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    append_row(path, {"n": 1})
    real_write = os.write

    def full(fd, data):
        real_write(fd, data[:7])  # part of the row reaches the disk, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ResultsError, match="disk full"):
        append_row(path, {"n": 2, "pad": "x" * 100})
    monkeypatch.undo()
    assert path.read_text() == json.dumps({"n": 1}) + "\n"


def _writer(path, worker, count):
    for i in range(count):
        append_row(path, {"worker": worker, "i": i, "pad": "y" * 5000})


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "r.jsonl"
    procs = [multiprocessing.get_context("spawn").Process(target=_writer, args=(path, w, 40)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    rows = read_rows([path])
    assert len(rows) == 120
    for w in range(3):
        assert sorted(r["i"] for r in rows if r["worker"] == w) == list(range(40))


def test_non_finite_numbers_are_refused(tmp_path):
    with pytest.raises(ValueError):
        append_row(tmp_path / "r.jsonl", {"ttft": float("nan")})


def test_missing_results_path_is_a_clear_error(tmp_path):
    with pytest.raises(ResultsError, match="no results at"):
        read_rows([tmp_path / "absent.jsonl"])


def test_a_file_that_is_not_results_is_never_appended_to(tmp_path):
    from slmbench.results import check_writable

    binary = tmp_path / "photo.jpg"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ResultsError, match="is not a results file"):
        check_writable(binary)
    assert binary.read_bytes() == bytes(range(256)) * 4
    rows = tmp_path / "r.jsonl"
    append_row(rows, {"n": 1})
    assert check_writable(rows) == rows


def test_a_json_array_of_rows_is_named_as_such(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"n": 1}, {"n": 2}]))
    with pytest.raises(ResultsError, match="is a JSON array; results are JSON Lines"):
        read_rows([path])
