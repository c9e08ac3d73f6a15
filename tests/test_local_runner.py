"""The local runner's bounded transfers: same groups as stock FnApiRunner, sent in ~TRANSFER_BYTES messages."""
import random

import pytest

pytest.importorskip("apache_beam")

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
def small_transfers(monkeypatch):
    monkeypatch.setattr(local_runner, "TRANSFER_BYTES", 4096)


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
