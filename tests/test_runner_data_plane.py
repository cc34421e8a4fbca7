"""The FnApiRunner's data plane to its worker processes: no bundle input lost to a timed flush
(pipeline/runner_fixes.py)."""
from __future__ import annotations

import threading

import pytest
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker.data_plane import ClosableOutputStream, TimeBasedBufferingClosableOutputStream

import pipeline.cli as cli
from pipeline.runner_fixes import no_timed_flush_of_worker_inputs

A, B = b"a" * 1000, b"b" * 1000


def _write_while_a_flush_may_hand_on(stream, flush_within: float) -> list:
    """Write A; if a timed flush takes it, write B while that flush's hand-off waits (as a send to
    a full queue does); close. Every byte the stream handed on."""
    sent, flushing, written = stream.sent, stream.flushing, stream.written
    stream.write(A)
    flushing.wait(flush_within)  # a timed stream flushes within its 10 ms; another one never does on its own
    stream.write(B)
    written.set()
    stream.close()
    return b"".join(sent)


def _stream(make, time_limit_ms: int):
    sent, flushing, written = [], threading.Event(), threading.Event()

    def send(data: bytes) -> None:
        if data:
            sent.append(data)
            if not written.is_set():  # a timed flush, on the timer's thread: wait for the writer
                flushing.set()
                written.wait(5)

    stream = make(send, time_limit_ms)
    stream.sent, stream.flushing, stream.written = sent, flushing, written
    return stream


def test_beams_timed_flush_drops_what_is_written_while_it_hands_data_on():
    """The race, in this Beam: the flush empties the stream after its hand-off, and the write made
    meanwhile is gone. Once this fails, Beam has fixed it and runner_fixes can go."""
    stream = _stream(lambda send, ms: TimeBasedBufferingClosableOutputStream(send, flush_callback=send, time_flush_threshold_ms=ms), 10)
    assert _write_while_a_flush_may_hand_on(stream, 5) == A


def test_the_runners_streams_to_workers_have_no_timed_flush_and_lose_nothing(monkeypatch):
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1000)  # Beam's default, put back after
    no_timed_flush_of_worker_inputs()
    # what the runner's gRPC data server (data_plane._GrpcDataChannel) makes for each bundle input
    make = lambda send, ms: ClosableOutputStream.create(send, send, ms)  # noqa: E731
    stream = _stream(make, worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)
    assert not isinstance(stream, TimeBasedBufferingClosableOutputStream)
    assert _write_while_a_flush_may_hand_on(stream, 0.2) == A + B


def test_a_build_turns_the_timed_flush_off_before_it_starts_the_runner(monkeypatch):
    class Started(Exception):
        pass

    def local_runner(opts):
        assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
        raise Started

    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1000)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # run_pipeline sets it where unset: not in this process
    monkeypatch.setattr(cli, "preflight", lambda opts: None)
    monkeypatch.setattr(cli, "local_runner", local_runner)
    with pytest.raises(Started):
        cli.run_pipeline(cli.options(["--catalog", "unused.csv", "--output", "unused"]))
