"""Files the build writes in place (cutout cache entries, summary.json, build.json) appear whole or
not at all, so a build killed mid-write leaves nothing a resumed build would take for finished; and
the large files it reads by ranges on gs:// share a client."""
from __future__ import annotations

import pytest

from galaxiesml.storage import PARTIAL_SUFFIX, created_atomically


def test_a_file_appears_only_once_closed_and_replaces_an_older_one(tmp_path):
    dest = tmp_path / "sub" / "entry.tar"
    with created_atomically(str(dest)) as f:
        f.write(b"first half ")
        f.flush()
        assert not dest.exists()  # a kill here leaves only the partial file
        assert len(list(dest.parent.glob("entry.tar" + PARTIAL_SUFFIX + "*"))) == 1
        f.write(b"second half")
    assert dest.read_bytes() == b"first half second half"
    with created_atomically(str(dest)) as f:
        f.write(b"newer")
    assert dest.read_bytes() == b"newer"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["entry.tar"]


def test_a_failed_write_leaves_the_older_file_and_no_partial(tmp_path):
    dest = tmp_path / "summary.json"
    dest.write_bytes(b"older")
    with pytest.raises(RuntimeError, match="disk gone"):
        with created_atomically(str(dest)) as f:
            f.write(b"half")
            raise RuntimeError("disk gone")
    assert dest.read_bytes() == b"older"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_writers_of_one_entry_at_once_each_leave_a_whole_file(tmp_path):
    """Two builds sharing a cache may write the same galaxy's entry at the same moment."""
    dest = str(tmp_path / "entry.tar")
    first, second = created_atomically(dest), created_atomically(dest)
    a, b = first.__enter__(), second.__enter__()
    a.write(b"A" * 5000)
    b.write(b"B" * 3000)
    a.write(b"A" * 5000)
    first.__exit__(None, None, None)
    assert (tmp_path / "entry.tar").read_bytes() == b"A" * 10000
    second.__exit__(None, None, None)
    assert (tmp_path / "entry.tar").read_bytes() == b"B" * 3000
    assert [p.name for p in tmp_path.iterdir()] == ["entry.tar"]


def test_gs_files_opened_for_ranges_share_one_client_per_thread_and_job(monkeypatch):
    """Beam makes a storage client for every gs:// call (~3 ms of CPU); open_for_ranges makes one
    per thread, and again for another job's options or another emulator."""
    import threading

    gcsio = pytest.importorskip("apache_beam.io.gcp.gcsio")
    from galaxiesml.storage import open_for_ranges

    made = []

    class Client:
        def __init__(self, pipeline_options=None):
            made.append(self)

        def open(self, path, mode, read_buffer_size):
            return (self, path, read_buffer_size)

    monkeypatch.setattr(gcsio, "GcsIO", Client)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    first = [open_for_ranges(f"gs://b/p{k}.fits")[0] for k in range(3)]
    assert len(made) == 1 and all(c is made[0] for c in first)
    other = []
    thread = threading.Thread(target=lambda: other.append(open_for_ranges("gs://b/p.fits")[0]))
    thread.start()
    thread.join()
    assert len(made) == 2 and other[0] is made[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:2")
    assert open_for_ranges("gs://b/p.fits")[0] is made[2]
