"""A local worker process: Beam's SDK worker, sending its data in messages of about the size it is given, and
forked from a process that has already imported it.

The worker is Beam's own (sdk_worker_main); this only applies set_transfer_bytes in the worker's process first,
so its output streams flush at TRANSFER_BYTES (1 MB by default) instead of Beam's 10 MB. Each flush is copied
three or four times on its way out (the stream, the Data message, the coalesced Elements message, its
serialization) and a worker has an output stream per output of the stage, so 10 MB flushes multiply into a
large part of a worker's peak.

How it starts. FnApiRunner starts each multi_processing worker as a new interpreter once the first stage runs
(when the launcher has imported Beam and built the pipeline), and each worker then spends seconds of CPU
importing Beam, grpc, numpy and sentencepiece before it takes a bundle:
the cores the launcher leaves idle until then stay idle, and then every core imports. Instead, the launcher
starts a ForkServer first thing, before it imports Beam itself:

    python -m pipeline.local_worker --fork-server TRANSFER_BYTES REPLY_FD

imports those modules once, on an idle core, and then forks a worker for each request, which starts with
nothing left to import. It has one thread and has never created a gRPC channel or server, which is what
forking needs: a fork copies only the calling thread, and gRPC does not survive a fork of a process using it. The protocol,
one line each way: the launcher writes a worker's environment as JSON on the server's stdin; the server
answers ``started PID`` and later ``exited PID CODE`` on REPLY_FD (its stdout and stderr stay the launcher's,
for the workers' output). At the end of its stdin it exits, once its workers have.

    python -m pipeline.local_worker TRANSFER_BYTES

is the same worker as a new interpreter: the command the local runner gives FnApiRunner for its workers, used
where no fork server runs (another platform, a Beam whose worker start-up differs, a fork server that died).
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading

FORK_SERVER_FLAG = "--fork-server"
# What the fork server imports, so that a worker forked from it has nothing left to import: Beam's worker
# (and with it Beam, grpc and protobuf), and the modules this project's DoFns unpickle into.
PRELOAD = ("apache_beam.runners.worker.sdk_worker_main", "pipeline.local_runner", "pipeline.read",
           "pipeline.filter_stage", "pipeline.dedup", "pipeline.tokenizer_stage", "pipeline.write", "pipeline.rejected",
           "pipeline.manifest_stage")
# Importing those starts two idle threads, which a fork would leave behind (both libraries cope with that, but
# a process that forks is best left with one thread): numpy's OpenBLAS starts a thread pool, and pyarrow's
# jemalloc a background purging thread. Without them the server is single-threaded; a worker, one per core,
# has no use for a BLAS thread pool either. Values set in the environment win.
_SERVER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}


def run_worker(transfer_bytes: int, environment: dict[str, str]) -> None:
    """Beam's worker, after set_transfer_bytes and bound_worker_queues; ``environment`` adds what FnApiRunner
    starts a worker with (its control and logging addresses, the pipeline options, its id) when it is not in
    os.environ already."""
    from apache_beam.runners.worker import sdk_worker_main

    from pipeline.local_runner import bound_worker_queues, set_transfer_bytes

    os.environ.update(environment)
    if set_transfer_bytes(transfer_bytes):
        bound_worker_queues(transfer_bytes)
    sdk_worker_main.main([])


def main(argv: list[str]) -> None:
    args = argv[1:]
    if len(args) == 1 and args[0].isdigit():
        run_worker(int(args[0]), {})
    elif len(args) == 3 and args[0] == FORK_SERVER_FLAG and args[1].isdigit() and args[2].isdigit():
        serve(int(args[1]), int(args[2]))
    else:
        raise SystemExit(f"usage: python -m pipeline.local_worker TRANSFER_BYTES, or {FORK_SERVER_FLAG} "
                         f"TRANSFER_BYTES REPLY_FD (got {args})")


def serve(transfer_bytes: int, reply_fd: int) -> None:
    """The fork server (see the module docstring). Single-threaded: it waits on its stdin and on a pipe that
    SIGCHLD writes to (signal.set_wakeup_fd), so it can fork at any time."""
    import importlib
    import select

    # Ctrl-C reaches the whole process group: the launcher and the workers handle it, and the server ends
    # with its stdin when the launcher does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in PRELOAD:
        importlib.import_module(module)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so that SIGCHLD reaches the wakeup fd
    signal.set_wakeup_fd(wake_w)
    replies = os.fdopen(reply_fd, "w", buffering=1)  # line-buffered: each reply leaves whole
    pending, running, reading = b"", set(), True
    while reading or running:
        ready, _, _ = select.select([0, wake_r] if reading else [wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        if 0 in ready:
            data = os.read(0, 1 << 16)  # not sys.stdin: its buffer could hide a second request from select
            reading = bool(data)
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    _forked_worker(transfer_bytes, line, [wake_r, wake_w, reply_fd])
                running.add(pid)
                _reply(replies, f"started {pid}")
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            running.discard(pid)
            _reply(replies, f"exited {pid} {os.waitstatus_to_exitcode(status)}")


def _reply(replies, line: str) -> None:
    try:
        print(line, file=replies)
    except BrokenPipeError:  # the launcher has exited: nobody waits for the answer, and its workers end on their own
        os._exit(0)


def _forked_worker(transfer_bytes: int, request: bytes, server_fds: list[int]) -> None:
    """The child side of a fork in serve(): drop the server's signal handling and files, run the worker with
    the environment in ``request``, and exit with its outcome, never returning into the server's loop."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in server_fds:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # requests are for the server only
        os.close(devnull)
        run_worker(transfer_bytes, json.loads(request))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # noqa: BLE001 - reported, then the exit code says it failed
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


class ForkServer:
    """The launcher's side of the fork server: start() forks a worker, wait() gives its exit code."""

    def __init__(self, transfer_bytes: int):
        from pipeline.local_runner import bound_malloc

        bound_malloc()  # in the environment the server starts with, hence in every worker's
        self.transfer_bytes = transfer_bytes
        reply_r, reply_w = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.local_worker", FORK_SERVER_FLAG, str(transfer_bytes), str(reply_w)],
                stdin=subprocess.PIPE, pass_fds=[reply_w], env={**_SERVER_ENV, **os.environ})
        finally:
            os.close(reply_w)
        self._lock = threading.Lock()  # one request at a time, so the next "started" reply is its answer
        self._workers = 0  # started so far
        self._started: queue.Queue[int | None] = queue.Queue()
        self._exited = threading.Condition()
        self._codes: dict[int, int] = {}
        self._gone = False
        threading.Thread(target=self._read_replies, args=(os.fdopen(reply_r, "r"),), name="fork-server-replies",
                         daemon=True).start()

    def _read_replies(self, replies) -> None:
        with replies:
            for line in replies:
                kind, pid, *code = line.split()
                if kind == "started":
                    self._started.put(int(pid))
                else:
                    with self._exited:
                        self._codes[int(pid)] = int(code[0])
                        self._exited.notify_all()
        with self._exited:  # the server has exited: no more replies
            self._gone = True
            self._exited.notify_all()
        self._started.put(None)

    def start(self, environment: dict[str, str]) -> int:
        """Fork a worker with ``environment`` (see run_worker); its pid. OSError if the server has exited."""
        with self._lock:
            if self._gone:
                raise OSError("the local fork server has exited")
            self._process.stdin.write(json.dumps(environment).encode("utf-8") + b"\n")
            self._process.stdin.flush()
            pid = self._started.get()
            self._workers += pid is not None
        if pid is None:
            raise OSError("the local fork server exited before it started a worker")
        return pid

    def wait(self, pid: int) -> int | None:
        """Block until worker ``pid`` exits; its exit code (negative: the signal that ended it), or None if
        the server exited first and took the answer with it."""
        with self._exited:
            while pid not in self._codes and not self._gone:
                self._exited.wait()
            return self._codes.get(pid)

    def kill(self, pid: int) -> None:
        """SIGKILL worker ``pid`` unless it has been seen to exit (its pid could be another process's by now)."""
        with self._exited:
            if pid not in self._codes:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def close(self, timeout: float = 60.0) -> None:
        """End the server's input; it exits once its workers have (they end with the run's control channel).
        One that has not after ``timeout`` seconds is killed, and one that never started a worker at once (a
        run that failed its checks need not wait for the server's imports)."""
        with self._lock:
            if not self._workers:
                self._process.kill()
        try:
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def start_fork_server(beam_args: list[str], transfer_bytes: int) -> ForkServer | None:
    """A ForkServer for a local multi_processing run with bounded transfers, told from the Beam flags without
    importing Beam (the server's import of it is what overlaps the launcher's); None for any other run and
    where fork() is missing (Windows). The flags are read as prepare's pipeline_options reads them: no --runner
    or a local one, multi_processing given or implied by --direct_num_workers N != 1. Should Beam read them
    otherwise, nothing breaks: a run that forks no worker leaves the server idle until close()."""
    import argparse

    from pipeline.local_runner import LOCAL_RUNNERS

    if not hasattr(os, "fork"):
        return None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--runner", default=None)
    parser.add_argument("--direct_num_workers", type=int, default=1)
    parser.add_argument("--direct_running_mode", default=None)
    try:
        flags, _ = parser.parse_known_args(beam_args)
    except (argparse.ArgumentError, SystemExit):  # a malformed value: Beam's own parser reports it
        return None
    mode = flags.direct_running_mode or ("multi_processing" if flags.direct_num_workers != 1 else "in_memory")
    local = flags.runner in LOCAL_RUNNERS
    if not (local and mode == "multi_processing" and transfer_bytes > 0):
        return None
    return ForkServer(transfer_bytes)


if __name__ == "__main__":
    main(sys.argv)
