"""The local runner: Beam's FnApiRunner, provisioned with the pipeline options, with bounded worker memory.

Two things limit the memory a local worker spends on what the runner sends it and on freed blocks:

- The runner sends a grouped stage's input to each worker in ~1 MB data messages. Stock FnApiRunner encodes
  a worker's whole share of a GroupByKey's output as one byte string and sends it as one message, so at the
  dedup grouping a worker received the compressed text of all its kept documents at once; the largest worker
  peaked at 336/448/594/889 MB for 50/200/400/800 MB of input, and at 318-324/389-399/431/512 MB with the
  pieces sent here. The share is encoded in pieces of about TRANSFER_BYTES, cut at group boundaries
  (ChunkedGroupingBuffer), and each piece leaves as soon as it is written (_send_input_in_pieces): a worker's
  receive queue holds at most 5 messages and the runner waits while it is full, so a few MB of input wait in
  a worker whatever the corpus size. The groups, their assignment to workers and their order are those of
  the stock runner; only the message sizes differ.
- glibc malloc thresholds are fixed (_MALLOC_ENV), so big blocks go back to the system when freed.

Both runner changes replace FnApiRunner internals (its GroupingBuffer class and one BundleManager method).
set_transfer_bytes() first checks that this Beam still has them as expected, and otherwise leaves the
runner as it is, with a warning: results are the same either way, only a worker's peak memory differs. The
launching process still holds every byte between stages, as FnApiRunner keeps all intermediate data in its
memory.
"""
from __future__ import annotations

import inspect
import logging
import os

LOG = logging.getLogger("pipeline.local_runner")

# Size of the data messages that carry a stage's input from the runner to a worker (bytes). The stock
# runner's sender flushes at 10 MB, and a grouped stage's input went out as one message per worker. With ~1 MB
# messages the largest worker peaked at 389-399 instead of 448 MB for 200 MB of input, 512 instead of 889 MB
# for 800 MB, in the same time; 0.125 MB messages gave the same peaks as 1 MB.
DEFAULT_TRANSFER_BYTES = 1 << 20
TRANSFER_BYTES = DEFAULT_TRANSFER_BYTES  # in use; set by set_transfer_bytes


def _chunked_grouping_buffer_class(base):
    """A subclass of FnApiRunner's GroupingBuffer ``base`` whose partition(n) returns each worker's share as
    pieces of about TRANSFER_BYTES (a group is never split) instead of one byte string."""
    from apache_beam.coders.coder_impl import create_OutputStream
    from apache_beam.transforms import window
    from apache_beam.utils import windowed_value

    class ChunkedGroupingBuffer(base):
        def partition(self, n: int) -> list[list[bytes]]:
            if self._grouped_output or not self._windowing.is_default():
                # Already partitioned (the stock method returns the cached parts), or a windowed or triggered
                # grouping, which this pipeline never has: the stock method.
                return super().partition(n)
            # The element the stock method emits for a globally windowed group: (key, values) in the global
            # window, at its end of time, as the one on-time pane.
            pane = windowed_value.PaneInfo(is_first=True, is_last=True,
                                           timing=windowed_value.PaneInfoTiming.ON_TIME, index=0,
                                           nonspeculative_index=0)
            in_window = window.GlobalWindows.windowed_value(
                None, timestamp=window.GlobalWindow().max_timestamp(), pane_info=pane).with_value
            coder, key_coder = self._post_grouped_coder.get_impl(), self._key_coder.get_impl()
            parts: list[list[bytes]] = [[] for _ in range(n)]
            streams = [create_OutputStream() for _ in range(n)]
            for i, (encoded_key, values) in enumerate(self._table.items()):  # groups dealt round-robin
                w = i % n
                coder.encode_to_stream(in_window((key_coder.decode(encoded_key), values)), streams[w], True)
                if streams[w].size() >= TRANSFER_BYTES:
                    parts[w].append(streams[w].get())
                    streams[w] = create_OutputStream()
            for part, stream in zip(parts, streams):
                if stream.size() or not part:
                    part.append(stream.get())
            self._table.clear()
            self._grouped_output = parts
            return parts

    return ChunkedGroupingBuffer


def _send_input_in_pieces(self, process_bundle_id: str, read_transform_id: str, byte_streams) -> None:
    """BundleManager._send_input_to_worker, sending a message whenever TRANSFER_BYTES are buffered (the stock
    method leaves that to the stream, which flushes at 10 MB)."""
    data_out = self._worker_handler.data_conn.output_stream(process_bundle_id, read_transform_id)
    for byte_stream in byte_streams or []:
        data_out.write(byte_stream)
        if data_out.size() >= TRANSFER_BYTES:
            data_out.flush()
    data_out.close()


_STOCK: dict[str, object] = {}  # FnApiRunner's own GroupingBuffer and _send_input_to_worker, once replaced


def set_transfer_bytes(transfer_bytes: int) -> bool:
    """Make FnApiRunner, in this process (which runs the runner), send stage inputs to workers in messages of
    about ``transfer_bytes``, or restore its stock transfers when 0. Returns whether the bounded transfers are
    in use: False for 0, and False with a warning when this Beam's runner is not the one this was written for."""
    global TRANSFER_BYTES
    from apache_beam.runners.portability.fn_api_runner import execution, fn_runner

    if not _STOCK:
        grouping, send = execution.GroupingBuffer, fn_runner.BundleManager._send_input_to_worker
        uses = set(grouping.__init__.__code__.co_names) | set(grouping.partition.__code__.co_names)
        if not ({"_table", "_windowing", "_post_grouped_coder", "_key_coder", "_grouped_output"} <= uses
                and list(inspect.signature(send).parameters) == list(inspect.signature(_send_input_in_pieces).parameters)
                and "_worker_handler" in send.__code__.co_names):
            if transfer_bytes:
                LOG.warning("this Beam's FnApiRunner differs from the one pipeline.local_runner was written for; "
                            "grouped stages reach local workers as one message each, so a worker's peak memory "
                            "grows with its share of the corpus (the results are the same)")
            return False
        _STOCK.update(grouping=grouping, send=send, chunked=_chunked_grouping_buffer_class(grouping))
    if transfer_bytes:
        TRANSFER_BYTES = int(transfer_bytes)
        execution.GroupingBuffer = _STOCK["chunked"]
        fn_runner.BundleManager._send_input_to_worker = _send_input_in_pieces
    else:
        execution.GroupingBuffer = _STOCK["grouping"]
        fn_runner.BundleManager._send_input_to_worker = _STOCK["send"]
    return bool(transfer_bytes)


# glibc malloc settings for local runs (bytes). By default glibc raises its mmap threshold each time a large
# block is freed (up to 32 MB); after that, big texts, token arrays and grouped payloads come from the heap
# and fragment it, so a worker's RSS crept up through the streaming read stage (207 -> 362 MB over the 200 MB
# benchmark corpus). A fixed threshold (which also fixes the trim threshold) keeps blocks of 4 MiB and more in
# mmap, returned to the OS when freed: the read stage stays at ~300 MB and the largest worker's peak went from
# 495 to 427-441 MB, with no CPU cost measurable in interleaved runs. 128 KiB gave the same peaks for twice
# the system time (page faults).
_MALLOC_ENV = {  # environment variable -> (value, its mallopt() parameter number from malloc.h)
    # glibc gives each thread its own arena, and a worker's gRPC and bundle threads then keep freed memory
    # spread over many of them; two arenas cut a worker's peak at 200 MB of input from 571 to 482 MB.
    "MALLOC_ARENA_MAX": ("2", -8),
    "MALLOC_MMAP_THRESHOLD_": (str(4 << 20), -3),
    "MALLOC_TRIM_THRESHOLD_": (str(8 << 20), -1),
}


def _bound_malloc() -> None:
    """Apply _MALLOC_ENV to the local worker processes (they inherit the environment) and, through mallopt,
    to this process, which runs the in-process worker and holds the runner's buffers. Values the user set in
    the environment win; on a C library without mallopt (macOS, musl) this only sets the environment."""
    import ctypes

    for name, (value, _) in _MALLOC_ENV.items():
        os.environ.setdefault(name, value)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for name, (_, param) in _MALLOC_ENV.items():
        try:
            libc.mallopt(param, int(os.environ[name]))
        except (ValueError, AttributeError):  # a non-numeric user value is left to glibc to ignore
            pass


def make_local_runner(options, transfer_bytes: int = DEFAULT_TRANSFER_BYTES):
    """Beam's FnApiRunner with the pipeline options provisioned to its workers (as DirectRunner does), sending
    stage inputs to workers in messages of about ``transfer_bytes`` (0 = FnApiRunner's stock transfers)."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    _bound_malloc()
    set_transfer_bytes(transfer_bytes)
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)
