"""The local runner's bounded transfers: same groups as stock FnApiRunner, sent in ~TRANSFER_BYTES messages."""
import random

import pytest

from references import require  # noqa: E402
require("apache_beam")

from apache_beam import coders  # noqa: E402
from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream  # noqa: E402
from apache_beam.runners.portability.fn_api_runner import execution  # noqa: E402
from apache_beam.runners.worker import data_plane  # noqa: E402
from apache_beam.transforms import core, window  # noqa: E402
from apache_beam.utils import windowed_value  # noqa: E402

from pipeline import local_runner  # noqa: E402

PRE = coders.WindowedValueCoder(coders.TupleCoder([coders.BytesCoder(), coders.BytesCoder()]))
POST = coders.WindowedValueCoder(coders.TupleCoder([coders.BytesCoder(), coders.IterableCoder(coders.BytesCoder())]))


def _classes():
    """(FnApiRunner's GroupingBuffer, ours)."""
    assert local_runner.set_transfer_bytes(local_runner.TRANSFER_BYTES)
    return local_runner._STOCK["grouping"], local_runner._STOCK["chunked"]


def _filled(cls, pairs):
    buf = cls(PRE, POST, core.Windowing(window.GlobalWindows()))
    out = create_OutputStream()
    for k, v in pairs:
        PRE.get_impl().encode_to_stream(windowed_value.WindowedValue((k, v), 0, [window.GlobalWindow()]), out, True)
    buf.append(out.get())
    return buf


def _decode(pieces):
    """A worker's pieces -> its (key, values, timestamp, pane) elements in order."""
    elements = []
    for piece in pieces:
        stream = create_InputStream(piece)
        while stream.size() > 0:
            wv = POST.get_impl().decode_from_stream(stream, True)
            elements.append((wv.value[0], list(wv.value[1]), wv.timestamp, wv.pane_info, wv.windows))
    return elements


@pytest.fixture
def small_transfers():
    """4 KB messages in this process (the runner's pieces and every data stream's flush size)."""
    assert local_runner.set_transfer_bytes(4096)
    yield
    assert local_runner.set_transfer_bytes(local_runner.DEFAULT_TRANSFER_BYTES)


def _pairs(seed=0, groups=300):
    rng = random.Random(seed)
    return [(b"k%d" % rng.randrange(groups), rng.randbytes(rng.randrange(1, 200))) for _ in range(3000)]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_chunked_partition_gives_the_stock_groups_in_order(small_transfers, workers):
    stock, chunked = _classes()
    pairs = _pairs()
    expected = [_decode(part) for part in _filled(stock, pairs).partition(workers)]
    parts = _filled(chunked, pairs).partition(workers)
    assert [_decode(part) for part in parts] == expected
    assert sum(len(e) for e in expected) == len({k for k, _ in pairs})
    for part in parts:  # ~150 KB per worker, cut into pieces just over 4 KB (a group is never split)
        assert len(part) > 10
        assert all(len(piece) < 4096 + 200 * 40 for piece in part)


def test_chunked_partition_is_cached_and_handles_empty_and_surplus_workers(small_transfers):
    _, chunked = _classes()
    buf = _filled(chunked, [(b"a", b"1"), (b"a", b"2")])
    parts = buf.partition(3)
    assert [_decode(p)[0][:2] for p in parts[:1]] == [(b"a", [b"1", b"2"])]
    assert parts[1] == [b""] and parts[2] == [b""]  # a worker with no group still gets one (empty) piece
    assert buf.partition(3) is parts
    assert _filled(chunked, []).partition(2) == [[b""], [b""]]


def test_input_leaves_in_messages_of_about_transfer_bytes(small_transfers):
    """Through Beam's own in-memory data channel: each message is flushed once TRANSFER_BYTES are buffered,
    where the stock sender would buffer up to 10 MB into one message."""
    channel = data_plane.InMemoryDataChannel()

    class Manager:
        _worker_handler = type("Handler", (), {"data_conn": channel})()

    pieces = [bytes([i]) * 1500 for i in range(40)]
    local_runner._send_input_in_pieces(Manager(), "bundle-1", "read", pieces)
    received = [e for e in channel.inverse()._inputs if e.instruction_id == "bundle-1"]
    assert b"".join(e.data for e in received) == b"".join(pieces)
    # flushed after every third 1500-byte piece (4500 >= 4096); close() sends the last 1500 bytes
    assert [len(e.data) for e in received] == [4500] * 13 + [1500]


def test_make_local_runner_installs_bounded_transfers_and_zero_restores_the_stock_runner():
    """Fails if a Beam upgrade makes set_transfer_bytes fall back to the stock runner."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    local_runner.make_local_runner(PipelineOptions([]))
    assert execution.GroupingBuffer is local_runner._STOCK["chunked"]
    assert fn_runner.BundleManager._send_input_to_worker is local_runner._send_input_in_pieces
    try:
        assert not local_runner.set_transfer_bytes(0)
        assert execution.GroupingBuffer is local_runner._STOCK["grouping"]
        assert fn_runner.BundleManager._send_input_to_worker is local_runner._STOCK["send"]
        assert local_runner._STOCK["chunked"].__mro__[1] is local_runner._STOCK["grouping"]
    finally:
        assert local_runner.set_transfer_bytes(1 << 20)


def test_worker_queues_hold_a_few_messages_and_zero_leaves_beams_bounds(monkeypatch):
    """bound_worker_queues runs in a worker before its data channel exists; the channel's queues then take
    WORKER_QUEUE_MESSAGES messages' worth of bytes, where Beam's receive queue takes 5 messages of any size."""
    monkeypatch.setattr(data_plane, "_DEFAULT_SEND_QUEUE_MAX_BYTES", data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES)
    assert not local_runner.bound_worker_queues(0)
    assert data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES == 100 << 20
    assert local_runner.bound_worker_queues(1 << 20)
    channel = data_plane._GrpcDataChannel()  # the base of the worker's GrpcClientDataChannel, without a connection
    try:
        limit = local_runner.WORKER_QUEUE_MESSAGES << 20
        assert channel._received["bundle-1"].max_bytes == limit
        assert channel._to_send.max_bytes == channel._pending_send.max_bytes == limit
        # One message larger than the bound still passes (alone), so a big group cannot block its worker.
        queue = channel._received["bundle-1"]
        queue.put(b"g", limit + 1, timeout=60)  # would block (and fail after 60 s) if the bound held it back
        assert queue.get(timeout=60) == b"g"
    finally:
        channel.close()


def test_a_failed_send_fails_the_bundle_instead_of_ending_its_input():
    """If writing a worker's input fails half-way, the worker must not see the end of its input (it would then
    finish the bundle on part of its data): the stream stays open and the error goes where the runner's read
    loop raises it."""
    channel = data_plane.InMemoryDataChannel()

    class Connection:
        _exception = None

    def pieces():
        yield b"x" * 100
        raise OSError("disk gone")

    local_runner._send_or_fail_bundle(Connection, channel.output_stream("bundle-9", "read"), pieces(), "bundle-9")
    assert isinstance(Connection._exception, RuntimeError)
    assert "bundle-9" in str(Connection._exception) and "OSError: disk gone" in str(Connection._exception)
    assert not [e for e in channel.inverse()._inputs if e.instruction_id == "bundle-9" and e.is_last]


@pytest.mark.parametrize("time_limit_ms", [0, "runner's"])
def test_streams_flush_at_transfer_bytes_and_zero_restores_beams_10_mb(small_transfers, time_limit_ms):
    """0: a worker's output streams. The runner's: the streams FnApiRunner's data server opens (its sends of a
    grouped stage's input to a worker among them), which also flush on a timer and are another class."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    if time_limit_ms:
        time_limit_ms = worker_handlers.DATA_BUFFER_TIME_LIMIT_MS
        assert time_limit_ms >= 1000  # long enough that no timed flush happens during this test

    def stream_sizes():
        sent = []
        stream = data_plane.ClosableOutputStream.create(lambda data: None, lambda data: sent.append(len(data)),
                                                        time_limit_ms)
        for _ in range(10):
            stream.write(b"y" * 1500)
            stream.maybe_flush()
        stream.close()
        return sent

    assert local_runner.set_transfer_bytes(4096)
    try:
        assert stream_sizes() == [4500, 4500, 4500]  # flushed once past 4096 bytes, where Beam waits for 10 MB
        assert data_plane._DEFAULT_SIZE_FLUSH_THRESHOLD == 4096  # and a worker coalesces messages up to that
        assert not local_runner.set_transfer_bytes(0)
        assert stream_sizes() == []  # Beam's stock streams: all 15,000 bytes still buffered, sent only by close()
        assert data_plane.SizeBasedBufferingClosableOutputStream is local_runner._STOCK["stream"]
        assert data_plane.TimeBasedBufferingClosableOutputStream is local_runner._STOCK["timed"]
        assert data_plane._DEFAULT_SIZE_FLUSH_THRESHOLD == 10 << 20
    finally:
        assert local_runner.set_transfer_bytes(local_runner.DEFAULT_TRANSFER_BYTES)


_TWO_WORKER_RUN = r'''
import hashlib, json, os, sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.worker import data_plane
from pipeline.local_runner import make_local_runner
from pipeline.local_worker import ForkServer

# The runner's send queues hold 64 KB instead of 100 MB: a worker's share of the grouping below (~20 MB) in
# 1 KB messages overflows them, and gRPC's buffers, many times. Sent before the bundle starts, as FnApiRunner
# does, it hangs.
data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES = 1 << 16
options = PipelineOptions(["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"])
transfer_bytes, start = int(sys.argv[1]), sys.argv[2]
server = ForkServer(transfer_bytes) if start != "interpreter" else None
if start == "dead-server":  # its workers start as new interpreters instead
    server._process.kill()
    server._process.wait()
print("SERVER " + json.dumps(server and server._process.pid), flush=True)

def values(seed):  # 200 keys x 100 values x 2 KB = 40 MB, made in the workers
    for i in range(seed, 20000, 8):
        yield i % 200, ("%05d" % i) * 400

def seen_by_worker(kv):
    from apache_beam.runners.worker import data_plane as worker_plane
    digest = hashlib.sha256("".join(sorted(kv[1])).encode()).hexdigest()
    flush = (worker_plane._DEFAULT_SIZE_FLUSH_THRESHOLD, worker_plane._DEFAULT_SEND_QUEUE_MAX_BYTES)
    return os.getpid(), flush, kv[0], len(kv[1]), digest, os.getppid()

with beam.Pipeline(runner=make_local_runner(options, transfer_bytes, server), options=options) as p:
    (p | beam.Create(range(8)) | beam.FlatMap(values) | beam.GroupByKey() | beam.Map(seen_by_worker)
       | beam.combiners.ToList() | beam.Map(lambda rows: print("RESULT " + json.dumps(rows), flush=True)))
if server:
    server.close()
'''


@pytest.mark.parametrize("transfer_bytes,start", [(1024, "fork"), (1024, "dead-server"), (0, "interpreter")])
def test_two_workers_finish_a_grouping_far_larger_than_the_send_queues(tmp_path, transfer_bytes, start):
    """Real worker processes. With 1 KB messages each worker is pipeline.local_worker's (it reports Beam's flush
    size as 1024 from inside the worker): a fork of the fork server, or, once the server has died, a new
    interpreter started as Beam would. The run finishes although the runner's send queues and the workers'
    queues (bound_worker_queues) are far smaller than a worker's share. With 0 the workers are Beam's own
    (10 MB). Same groups every way."""
    import hashlib
    import json
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(_TWO_WORKER_RUN)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(script), str(transfer_bytes), start], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too
        pytest.fail("the two-worker run hung (a deadlock between the runner's input sender and its workers)")
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    rows = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    server = json.loads(next(line for line in out.splitlines() if line.startswith("SERVER "))[7:])
    expected = [(k, 100, hashlib.sha256("".join(("%05d" % i) * 400 for i in range(k, 20000, 200)).encode()).hexdigest())
                for k in range(200)]
    assert sorted((key, n, digest) for _, _, key, n, digest, _ in rows) == expected
    # Messages and queues inside the workers: 1 KB messages and 4 KB queues, or Beam's 10 MB and 100 MB.
    queue_bytes = local_runner.WORKER_QUEUE_MESSAGES * transfer_bytes or 100 << 20
    assert {tuple(flush) for _, flush, _, _, _, _ in rows} == {(transfer_bytes or 10 << 20, queue_bytes)}
    parents = {row[5] for row in rows}
    if start == "fork":
        assert parents == {server}
    else:  # started by Beam through a shell: `/bin/sh -c COMMAND`
        assert server not in parents and proc.pid not in parents
    if start == "dead-server":
        assert "starting local worker" in err and "as a new interpreter" in err
    assert len({row[0] for row in rows}) == 2 and os.getpid() not in {row[0] for row in rows}
