"""The local runner: Beam's FnApiRunner, provisioned with the pipeline options, with bounded worker memory.

What limits the memory of a local run, all of it in data messages of about TRANSFER_BYTES (1 MB) where Beam
uses whole shares and 10 MB:

- Runner to worker. Stock FnApiRunner encodes a worker's whole share of a GroupByKey's output as one byte
  string and sends it as one message, so at the dedup grouping a worker received the compressed text of all
  its kept documents at once. Here the share is encoded in pieces cut at group boundaries
  (ChunkedGroupingBuffer), and each piece leaves as soon as it is written, from a thread
  (_send_input_in_pieces), while the runner starts the bundle and reads its outputs: FnApiRunner sends a
  bundle's whole input before it does either, which with pieces would deadlock once a share outgrows the
  send queues. The groups, their assignment to workers and their order are those of the stock runner. The
  runner's streams are time-based (TimeBasedBufferingClosableOutputStream), a second class whose 10 MB flush
  size would gather the pieces again: it is replaced along with the size-based one.
- Worker to runner. Beam's worker buffers each output stream up to 10 MB and coalesces queued messages up to
  10 MB, and copies each one three or four times on its way out (the stream, the Data message, the coalesced
  Elements message, its serialization), so those buffers and protobuf arenas dominate a worker's peak.
  multi_processing workers therefore run
  pipeline.local_worker, which applies set_transfer_bytes (and bound_worker_queues) in the worker before running
  Beam's sdk_worker_main.
- In the worker, queues. Beam lets a worker's receive queue hold 5 messages of any size, and one shard's group
  is one message (groups are never split), so a worker's whole share of the shards could wait there at once;
  bound_worker_queues limits every data queue of a worker to WORKER_QUEUE_MESSAGES messages' worth of bytes.
- glibc malloc thresholds are fixed (_MALLOC_ENV), so big blocks go back to the system when freed.

And one that is about time, not memory: with a fork server (pipeline.local_worker.ForkServer, started by the
launcher before it imports Beam), each worker is a fork of a process that has already imported Beam, instead
of a new interpreter that starts importing it only when the first stage runs (_forked_sdk_worker_class).

What still grows with the corpus comes with the size of a shard, which reaches its writer as one group; with
the shard count grown with the corpus, a worker's peak stays flat (benchmarks/bench_prepare.py, figures in
benchmarks/RESULTS.md).

All of these replace Beam internals. set_transfer_bytes() and make_local_runner() first check that this Beam
still has them as expected (_probe_beam, _probe_worker_start), and otherwise leave Beam as it is, with a
warning: results are the same either way, only the memory and the start-up time differ. The launching
process still holds every byte between stages, as FnApiRunner keeps all intermediate data in its memory.
"""
from __future__ import annotations

import inspect
import logging
import os
import threading

LOG = logging.getLogger("pipeline.local_runner")

# Size of the data messages between the runner and its local workers, both ways (bytes). Beam's streams
# flush at 10 MB, and a grouped stage's input goes out as one message per worker; every such message is held
# (and copied) whole by both sides, so small messages bound a worker's memory without costing time.
DEFAULT_TRANSFER_BYTES = 1 << 20
TRANSFER_BYTES = DEFAULT_TRANSFER_BYTES  # in use; set by set_transfer_bytes
# --runner values that mean this local runner (None: no --runner). Beam's DirectRunner would try Prism first.
LOCAL_RUNNERS = (None, "DirectRunner", "SwitchingDirectRunner", "FnApiRunner")


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


def _write_in_pieces(data_out, byte_streams) -> None:
    """Write ``byte_streams`` to ``data_out``, sending a message whenever the stream holds more than its flush
    size (TRANSFER_BYTES, see _small_message_stream_class), then end it."""
    for byte_stream in byte_streams or []:
        data_out.write(byte_stream)
        data_out.maybe_flush()
    data_out.close()


def _send_or_fail_bundle(data_conn, data_out, byte_streams, process_bundle_id: str) -> None:
    """The body of a sender thread. On any error the worker never sees the end of its input, so the bundle must
    not wait for it: the error is stored where the runner's read loop for this connection raises it (it checks
    the channel's _exception every second while it waits for outputs), and the pipeline fails with it."""
    try:
        _write_in_pieces(data_out, byte_streams)
    except BaseException as e:  # noqa: BLE001 - re-raised in the runner's thread through the channel
        LOG.exception("sending the input of %s to a local worker failed", process_bundle_id)
        data_conn._exception = RuntimeError(f"sending the input of {process_bundle_id} to a local worker failed: "
                                            f"{type(e).__name__}: {e}")


def _send_input_in_pieces(self, process_bundle_id: str, read_transform_id: str, byte_streams) -> None:
    """BundleManager._send_input_to_worker, sending a message whenever TRANSFER_BYTES are buffered (the stock
    method never asks its stream to flush, so a worker's share left as one message), from its own thread for
    a worker over gRPC.

    FnApiRunner sends a bundle's whole input before it asks the worker to start the bundle and before it reads
    the bundle's outputs. That is safe for one message, which the send queue takes whatever its size; in
    pieces, the worker's receive queue fills (a few messages), then the runner's send queues (100 MB each), and
    with a larger share the runner blocks here forever: a deadlock. Sent from a thread, the runner goes on at once to start the bundle and read its
    outputs while the input streams in, so neither side waits for the other and the worker's outputs no
    longer queue up in it. An in-process worker runs the whole bundle inside the runner's push(), so its
    input must be all there first: it is written here, before this returns, as the stock method does.
    """
    from apache_beam.runners.worker import data_plane

    data_conn = self._worker_handler.data_conn
    data_out = data_conn.output_stream(process_bundle_id, read_transform_id)
    if not isinstance(data_conn, data_plane._GrpcDataChannel):
        _write_in_pieces(data_out, byte_streams)
        return
    threading.Thread(target=_send_or_fail_bundle, args=(data_conn, data_out, byte_streams, process_bundle_id),
                     name=f"send-{process_bundle_id}", daemon=True).start()


def _small_message_stream_class(base):
    """A subclass of Beam's SizeBasedBufferingClosableOutputStream or TimeBasedBufferingClosableOutputStream
    ``base`` that flushes at TRANSFER_BYTES by default instead of 10 MB: every data stream a process opens then
    sends ~1 MB messages. A worker's outputs use the first; the runner's streams, its sends of a grouped
    stage's input among them, the second (FnApiRunner's data server also flushes every 1000 ms). With only the
    first replaced, the runner would coalesce its pieces into 10 MB messages again, and a worker's receive queue
    (5 messages) would hold several of them."""

    class SmallMessageStream(base):
        def __init__(self, close_callback=None, flush_callback=None, size_flush_threshold=None, *args, **kwargs):
            super().__init__(close_callback, flush_callback,
                             TRANSFER_BYTES if size_flush_threshold is None else size_flush_threshold, *args, **kwargs)

    return SmallMessageStream


# The command FnApiRunner starts its multi_processing workers with, and the one the local runner uses instead:
# Beam's worker after set_transfer_bytes (pipeline.local_worker).
_STOCK_WORKER_COMMAND = "{python} -m apache_beam.runners.worker.sdk_worker_main"
_WORKER_COMMAND = "{python} -m pipeline.local_worker {transfer_bytes}"

_STOCK: dict[str, object] = {}  # Beam's own classes and method, once replaced (see set_transfer_bytes)


def _probe_beam() -> bool:
    """Whether this Beam's FnApiRunner and data plane are the ones the replacements here were written for."""
    from apache_beam.runners.portability.fn_api_runner import execution, fn_runner
    from apache_beam.runners.worker import data_plane

    grouping, send = execution.GroupingBuffer, fn_runner.BundleManager._send_input_to_worker
    uses = set(grouping.__init__.__code__.co_names) | set(grouping.partition.__code__.co_names)
    channel = getattr(data_plane, "_GrpcDataChannel", None)
    stream = getattr(data_plane, "SizeBasedBufferingClosableOutputStream", None)
    timed = getattr(data_plane, "TimeBasedBufferingClosableOutputStream", None)
    create = getattr(getattr(data_plane, "ClosableOutputStream", None), "create", None)
    return bool(
        {"_table", "_windowing", "_post_grouped_coder", "_key_coder", "_grouped_output"} <= uses
        and list(inspect.signature(send).parameters) == list(inspect.signature(_send_input_in_pieces).parameters)
        and "_worker_handler" in send.__code__.co_names
        # The sender thread reports a failure through the channel's _exception, which input_elements raises.
        and channel is not None
        and "_exception" in set(channel.__init__.__code__.co_names) & set(channel.input_elements.__code__.co_names)
        # Streams are made by ClosableOutputStream.create, which looks the class up by its module-level name.
        and stream is not None and create is not None
        and "SizeBasedBufferingClosableOutputStream" in create.__code__.co_names
        # A worker coalesces queued messages into one gRPC message up to this module-level size.
        and isinstance(getattr(data_plane, "_DEFAULT_SIZE_FLUSH_THRESHOLD", None), int)
        and "_DEFAULT_SIZE_FLUSH_THRESHOLD" in channel._write_outputs.__code__.co_names
        and list(inspect.signature(stream.__init__).parameters)[1:4] == ["close_callback", "flush_callback",
                                                                          "size_flush_threshold"]
        # The runner's own streams are time-based (FnApiRunner's data server flushes every second), a subclass
        # whose size threshold is a default argument, bound to 10 MB when Beam was imported.
        and timed is not None and issubclass(timed, stream)
        and "TimeBasedBufferingClosableOutputStream" in create.__code__.co_names
        and list(inspect.signature(timed.__init__).parameters)[1:4] == ["close_callback", "flush_callback",
                                                                         "size_flush_threshold"])


def set_transfer_bytes(transfer_bytes: int) -> bool:
    """Make this process send its data in messages of about ``transfer_bytes``, or restore Beam's stock
    transfers when 0: grouped stage inputs go to workers in pieces (runner side), and every data stream flushes
    at that size (the runner's, and a worker's outputs once pipeline.local_worker calls this). Returns whether
    the bounded transfers are in use: False for 0, and False with a warning when this Beam is not the one this
    was written for."""
    global TRANSFER_BYTES
    from apache_beam.runners.portability.fn_api_runner import execution, fn_runner
    from apache_beam.runners.worker import data_plane

    if not _STOCK:
        if not _probe_beam():
            if transfer_bytes:
                LOG.warning("this Beam's FnApiRunner differs from the one pipeline.local_runner was written for; "
                            "grouped stages reach local workers as one message each and workers send 10 MB "
                            "messages, so a worker's peak memory grows with its share of the corpus (the results "
                            "are the same)")
            return False
        grouping, stream = execution.GroupingBuffer, data_plane.SizeBasedBufferingClosableOutputStream
        timed = data_plane.TimeBasedBufferingClosableOutputStream
        _STOCK.update(grouping=grouping, send=fn_runner.BundleManager._send_input_to_worker, stream=stream,
                      timed=timed, flush=data_plane._DEFAULT_SIZE_FLUSH_THRESHOLD,
                      chunked=_chunked_grouping_buffer_class(grouping), small=_small_message_stream_class(stream),
                      small_timed=_small_message_stream_class(timed))
    if transfer_bytes:
        TRANSFER_BYTES = int(transfer_bytes)
        execution.GroupingBuffer = _STOCK["chunked"]
        fn_runner.BundleManager._send_input_to_worker = _send_input_in_pieces
        data_plane.SizeBasedBufferingClosableOutputStream = _STOCK["small"]
        data_plane.TimeBasedBufferingClosableOutputStream = _STOCK["small_timed"]
        data_plane._DEFAULT_SIZE_FLUSH_THRESHOLD = TRANSFER_BYTES
    else:
        execution.GroupingBuffer = _STOCK["grouping"]
        fn_runner.BundleManager._send_input_to_worker = _STOCK["send"]
        data_plane.SizeBasedBufferingClosableOutputStream = _STOCK["stream"]
        data_plane.TimeBasedBufferingClosableOutputStream = _STOCK["timed"]
        data_plane._DEFAULT_SIZE_FLUSH_THRESHOLD = _STOCK["flush"]
    return bool(transfer_bytes)


# A worker's data queues, in messages of TRANSFER_BYTES: what it has received and not yet processed, and what it
# has output and gRPC has not yet taken. Beam bounds the first at 5 messages whatever their size and the
# others at 100 MB. A group is never split, so one shard's group (its compressed tokens) is one message: 5 of
# them, a worker's whole share of the shards, could wait in its queue.
WORKER_QUEUE_MESSAGES = 4


def bound_worker_queues(transfer_bytes: int) -> bool:
    """In a worker process, before its data channel exists: hold at most WORKER_QUEUE_MESSAGES x
    ``transfer_bytes`` in each of its data queues (a single larger message still passes, alone: Beam's queue
    admits one element over the limit rather than block for ever). Returns whether the bound is in use; False
    for 0 (Beam's stock transfers) or a Beam whose data plane differs."""
    from apache_beam.runners.worker import data_plane

    channel = getattr(data_plane, "_GrpcDataChannel", None)
    limit = getattr(data_plane, "_DEFAULT_SEND_QUEUE_MAX_BYTES", None)
    if not transfer_bytes or channel is None or not isinstance(limit, int) \
            or "_DEFAULT_SEND_QUEUE_MAX_BYTES" not in channel.__init__.__code__.co_names:
        return False
    data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES = WORKER_QUEUE_MESSAGES * int(transfer_bytes)
    return True


def _probe_worker_start() -> bool:
    """Whether this Beam starts a multi_processing worker as _forked_sdk_worker_class expects:
    SubprocessSdkWorkerHandler makes a local_job_service.SubprocessSdkWorker (looked up when it starts the
    worker) from these four values, and that class starts the worker with these environment variables."""
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    worker = getattr(local_job_service, "SubprocessSdkWorker", None)
    handler = getattr(worker_handlers, "SubprocessSdkWorkerHandler", None)
    if worker is None or handler is None or not hasattr(local_job_service, "BeamFnLoggingServicer"):
        return False
    consts = {c for const in worker.run.__code__.co_consts for c in (const if isinstance(const, tuple) else (const,))}
    return bool(
        "SubprocessSdkWorker" in handler.start_worker.__code__.co_names
        and list(inspect.signature(worker.__init__).parameters)[1:] == ["worker_command_line", "control_address",
                                                                       "provision_info", "worker_id"]
        and {"_worker_command_line", "_control_address", "_provision_info", "_worker_id"}
        <= set(worker.__init__.__code__.co_names)
        and {"CONTROL_API_SERVICE_DESCRIPTOR", "LOGGING_API_SERVICE_DESCRIPTOR", "PIPELINE_OPTIONS", "WORKER_ID"}
        <= consts)


def _forked_sdk_worker_class(base, server, command: str):
    """A subclass of Beam's SubprocessSdkWorker ``base`` that runs a worker started with ``command`` as a fork
    of ``server`` (pipeline.local_worker.ForkServer) instead of a new interpreter, or as a new interpreter
    (Beam's way) if the server has exited. As Beam's, it serves the worker's log messages to this process's
    logging, waits for the worker to exit, and kills it if this thread ends first."""
    import grpc
    from google.protobuf import json_format, text_format

    from apache_beam.portability.api import beam_fn_api_pb2_grpc, endpoints_pb2
    from apache_beam.runners.portability import local_job_service
    from apache_beam.utils import thread_pool_executor

    def descriptor(url: str) -> str:
        return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))

    class ForkedSdkWorker(base):
        def run(self):
            if self._worker_command_line != command:
                return super().run()
            # A worker sends keep-alive pings on its log stream while it is idle; allow them, as Beam does.
            logs = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                               options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)])
            port = logs.add_insecure_port("localhost:0")
            beam_fn_api_pb2_grpc.add_BeamFnLoggingServicer_to_server(local_job_service.BeamFnLoggingServicer(), logs)
            logs.start()
            environment = {
                "CONTROL_API_SERVICE_DESCRIPTOR": descriptor(self._control_address),
                "LOGGING_API_SERVICE_DESCRIPTOR": descriptor(f"localhost:{port}"),
                "PIPELINE_OPTIONS": json_format.MessageToJson(self._provision_info.provision_info.pipeline_options),
            }
            if self._worker_id:
                environment["WORKER_ID"] = self._worker_id
            try:
                pid = server.start(environment)
            except OSError as e:
                LOG.warning("%s; starting local worker %s as a new interpreter", e, self._worker_id)
                logs.stop(0)
                return super().run()
            code = None
            try:
                code = server.wait(pid)
                if code:
                    raise RuntimeError(f"local worker {self._worker_id} (pid {pid}) exited with code {code}")
                if code is None:
                    raise RuntimeError(f"the local fork server exited before local worker {self._worker_id} "
                                       f"(pid {pid}) did")
            finally:
                if code is None:
                    server.kill(pid)
                logs.stop(0)

    return ForkedSdkWorker


def _local_runner_class():
    """FnApiRunner, starting its multi_processing workers as pipeline.local_worker while the bounded transfers
    are in use (set_transfer_bytes), so that their outputs leave in ~1 MB messages as well, and as forks of its
    fork_server when it has one."""
    import sys

    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.portability import python_urns
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    class LocalRunner(fn_runner.FnApiRunner):
        fork_server = None  # a pipeline.local_worker.ForkServer, set by make_local_runner

        def run_via_runner_api(self, pipeline_proto, options):
            # run_pipeline has just put its worker command into the proto's environments: replace it.
            replaced = 0
            if fn_runner.BundleManager._send_input_to_worker is _send_input_in_pieces:
                stock = _STOCK_WORKER_COMMAND.format(python=sys.executable).encode()
                ours = _WORKER_COMMAND.format(python=sys.executable, transfer_bytes=TRANSFER_BYTES).encode()
                for env in pipeline_proto.components.environments.values():
                    if env.urn == python_urns.SUBPROCESS_SDK and env.payload == stock:
                        env.payload, replaced = ours, replaced + 1
                if not replaced and options.view_as(DirectOptions).direct_running_mode == "multi_processing":
                    LOG.warning("this Beam starts its local workers with another command than %r; they send "
                                "10 MB messages (the results are the same)", stock.decode())
            server = self.fork_server
            if not replaced or server is None or server.transfer_bytes != TRANSFER_BYTES:
                return super().run_via_runner_api(pipeline_proto, options)
            stock_worker = local_job_service.SubprocessSdkWorker
            local_job_service.SubprocessSdkWorker = _forked_sdk_worker_class(stock_worker, server, ours.decode())
            try:
                return super().run_via_runner_api(pipeline_proto, options)
            finally:
                local_job_service.SubprocessSdkWorker = stock_worker

    return LocalRunner


# glibc malloc settings for local runs (bytes). By default glibc raises its mmap threshold each time a large
# block is freed (up to 32 MB); after that, big texts, token arrays and grouped payloads come from the heap
# and fragment it, so a worker's RSS creeps up through the streaming read stage. A fixed threshold (which also
# fixes the trim threshold) keeps blocks of 4 MiB and more in mmap, returned to the OS when freed, so the read
# stage stays flat. A much lower threshold (128 KiB) costs system time in page faults for no lower peak.
_MALLOC_ENV = {  # environment variable -> (value, its mallopt() parameter number from malloc.h)
    # glibc gives each thread its own arena, and a worker's gRPC and bundle threads then keep freed memory
    # spread over many of them; two arenas keep that memory reusable.
    "MALLOC_ARENA_MAX": ("2", -8),
    "MALLOC_MMAP_THRESHOLD_": (str(4 << 20), -3),
    "MALLOC_TRIM_THRESHOLD_": (str(8 << 20), -1),
}


def bound_malloc() -> None:
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


def make_local_runner(options, transfer_bytes: int = DEFAULT_TRANSFER_BYTES, fork_server=None):
    """Beam's FnApiRunner with the pipeline options provisioned to its workers (as DirectRunner does), sending
    stage inputs to workers in messages of about ``transfer_bytes`` (0 = FnApiRunner's stock transfers), and
    forking its multi_processing workers from ``fork_server`` (pipeline.local_worker.ForkServer)."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    bound_malloc()
    set_transfer_bytes(transfer_bytes)
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    runner = _local_runner_class()(provision_info=info)
    if fork_server is not None and _probe_worker_start():
        runner.fork_server = fork_server
    elif fork_server is not None:
        LOG.warning("this Beam starts its local workers differently from what pipeline.local_runner expects; "
                    "each starts as a new interpreter (the results are the same)")
    return runner
