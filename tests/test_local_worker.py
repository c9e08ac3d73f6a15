"""Local workers forked from the fork server (pipeline.local_worker): when one starts, its protocol, and what
happens when a worker or the server dies. The runs whose workers are forks are in test_local_runner.py."""
import os
import signal
import time

import pytest

from references import require  # noqa: E402
require("apache_beam")

from pipeline.local_worker import ForkServer, start_fork_server  # noqa: E402

# A worker whose control address accepts no connection waits for it (Beam gives it 60 s): a running worker.
UNREACHABLE = {"CONTROL_API_SERVICE_DESCRIPTOR": 'url: "localhost:1"'}


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("flags,transfer_bytes,started", [
    (["--direct_num_workers", "2"], 1 << 20, True),
    (["--direct_num_workers=4", "--job_name", "x"], 1 << 20, True),
    (["--direct_running_mode", "multi_processing"], 1 << 20, True),  # one worker, still a process
    (["--runner", "FnApiRunner", "--direct_num_workers", "2"], 1024, True),
    ([], 1 << 20, False),  # in-process
    (["--direct_num_workers", "1"], 1 << 20, False),
    (["--direct_num_workers", "2", "--direct_running_mode", "multi_threading"], 1 << 20, False),
    (["--runner", "DataflowRunner", "--direct_num_workers", "2"], 1 << 20, False),
    (["--direct_num_workers", "2"], 0, False),  # Beam's stock worker and transfers
    (["--direct_num_workers", "two"], 1 << 20, False),  # left for Beam's parser to report
])
def test_a_fork_server_starts_for_local_multi_processing_runs_only(flags, transfer_bytes, started):
    server = start_fork_server(flags, transfer_bytes)
    try:
        assert (server is not None) == started
        if server is not None:
            assert server.transfer_bytes == transfer_bytes and server._process.poll() is None
    finally:
        if server is not None:
            server.close()  # it never started a worker: killed rather than waited for
            assert server._process.returncode == -signal.SIGKILL


def test_workers_are_forks_of_the_server_and_their_exits_are_reported():
    server = ForkServer(4096)
    try:
        running = server.start(UNREACHABLE)
        failing = server.start({})  # no control address at all: Beam's worker fails at once
        assert _parent(running) == server._process.pid  # a fork of the server, not a new interpreter
        assert os.listdir(f"/proc/{server._process.pid}/task") == [str(server._process.pid)]  # one thread
        with open(f"/proc/{running}/cmdline", "rb") as f:
            assert b"--fork-server" in f.read()
        assert server.wait(failing) == 1
        server._process.stdin.write(b"not json\n")  # a request the worker cannot read fails that worker only
        server._process.stdin.flush()
        with server._lock:
            garbled = server._started.get()
        assert server.wait(garbled) == 1 and server._process.poll() is None
        server.kill(running)
        assert server.wait(running) == -signal.SIGKILL
        server.kill(running)  # seen to exit: not signalled again (its pid may be reused)
    finally:
        server.close()
    assert server._process.returncode == 0
    with pytest.raises(OSError, match="exited"):
        server.start({})


def test_the_server_waits_for_its_workers_before_it_exits():
    """Once its input ends the server still reaps a running worker and reports its exit, then exits itself. The
    worker is ended only after the server has read that end of input (its read count rises), so a server that
    left at once would never report the exit and wait() would answer None."""
    server = ForkServer(4096)
    pid = server.start(UNREACHABLE)  # answered: the server is back in its select, waiting
    reads = _read_calls(server._process.pid)
    server._process.stdin.close()  # as close() does
    _wait_for(lambda: _read_calls(server._process.pid) > reads, "the server to read the end of its input")
    assert server._process.poll() is None  # its worker still runs
    os.kill(pid, signal.SIGTERM)
    assert server.wait(pid) == -signal.SIGTERM
    assert server._process.wait(timeout=DEADLINE_S) == 0  # and with no worker left, it exits
    server.close()


def test_a_dead_server_fails_start_and_wait_instead_of_blocking():
    server = ForkServer(4096)
    pid = server.start(UNREACHABLE)
    server._process.kill()
    assert server.wait(pid) is None  # the answer went with the server
    server.kill(pid)  # its orphaned worker is killed by pid
    with pytest.raises(OSError, match="exited"):
        server.start({})
    server.close()
    _wait_for(lambda: _state(pid) in ("gone", "Z"), f"the orphaned worker {pid} to end")


# How long a condition may take before the test calls it a hang: far beyond any normal delay on a loaded machine.
DEADLINE_S = 60


def _wait_for(condition, what: str) -> None:
    """Poll ``condition`` until it holds; fail only after DEADLINE_S (a hang, not a slow machine)."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S} s waiting for {what}")
        time.sleep(0.01)


def _read_calls(pid: int) -> int:
    """read() system calls process ``pid`` has made so far (/proc/PID/io)."""
    with open(f"/proc/{pid}/io") as f:
        return int(next(line for line in f if line.startswith("syscr:")).split()[1])


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
