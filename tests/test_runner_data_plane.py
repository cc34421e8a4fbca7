"""The FnApiRunner's data plane to its worker processes: no bundle input lost to a timed flush
(pipeline/runner_fixes.py)."""
from __future__ import annotations

import threading

import pytest
from apache_beam.runners.worker.data_plane import TimeBasedBufferingClosableOutputStream

import pipeline.cli as cli
from pipeline.runner_fixes import lock_timed_stream_writes

A, B = b"a" * 1000, b"b" * 1000


def _write_while_a_flush_hands_on(stream_class) -> bytes:
    """Write A; once the timer's flush (every 10 ms) has taken it and waits on its hand-off (as a
    send to a full queue does, here for up to 1 s), write B; close. Every byte the stream handed on."""
    sent, flushing, written = [], threading.Event(), threading.Event()

    def send(data: bytes) -> None:
        if data:
            sent.append(data)
            if not written.is_set():  # the timer's flush: wait for the writer (or the timeout)
                flushing.set()
                written.wait(1)

    stream = stream_class(send, flush_callback=send, time_flush_threshold_ms=10)
    stream.write(A)
    assert flushing.wait(5), "the timer never flushed"
    stream.write(B)
    written.set()
    stream.close()
    return b"".join(sent)


def test_beams_timed_flush_drops_what_is_written_while_it_hands_data_on():
    """The race, in this Beam: the flush empties the stream after its hand-off, and the write made
    meanwhile is gone. Once this fails, Beam has fixed it and runner_fixes can go."""
    lock_timed_stream_writes()

    class Unlocked(TimeBasedBufferingClosableOutputStream):
        write = TimeBasedBufferingClosableOutputStream.write.__wrapped__

    assert _write_while_a_flush_hands_on(Unlocked) == A


def test_with_writes_locked_a_timed_flush_loses_nothing():
    lock_timed_stream_writes()
    lock_timed_stream_writes()  # twice is once
    assert not hasattr(TimeBasedBufferingClosableOutputStream.write.__wrapped__, "__wrapped__")
    assert _write_while_a_flush_hands_on(TimeBasedBufferingClosableOutputStream) == A + B


def test_a_build_locks_the_writes_before_it_starts_the_runner(monkeypatch):
    class Started(Exception):
        pass

    def local_runner(opts):
        assert hasattr(TimeBasedBufferingClosableOutputStream.write, "__wrapped__")
        raise Started

    lock_timed_stream_writes()
    monkeypatch.setattr(TimeBasedBufferingClosableOutputStream, "write", TimeBasedBufferingClosableOutputStream.write.__wrapped__)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # run_pipeline sets it where unset: not in this process
    monkeypatch.setattr(cli, "preflight", lambda opts: None)
    monkeypatch.setattr(cli, "local_runner", local_runner)
    with pytest.raises(Started):
        cli.run_pipeline(cli.options(["--catalog", "unused.csv", "--output", "unused"]))
