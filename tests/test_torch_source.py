"""scripts/torch_source.py: where the set-up installs PyTorch from, decided without installing anything.

A local HTTP server with a torch/ page stands in for a reachable CPU index; a closed port for one that is not.
"""
import functools
import http.server
import os
import socket
import sys
import threading

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import torch_source  # noqa: E402


@pytest.fixture
def index_url(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<a href='torch-2.13.0+cpu.whl'>torch</a>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: connection refused


def test_probe(index_url, closed_url):
    assert torch_source.reachable(index_url)
    assert not torch_source.reachable(closed_url, timeout=2)
    assert not torch_source.reachable(index_url + "/missing", timeout=2)  # a 404 is not an index


def test_without_gpu_the_cpu_index_when_it_answers_else_the_default_index(index_url, closed_url):
    args, why = torch_source.torch_source({}, gpu=False, cpu_index=index_url)
    assert args == [f"torch=={torch_source.DEFAULT_VERSION}", "--index-url", index_url] and "CPU index" in why
    args, why = torch_source.torch_source({"TORCH_VERSION": "2.9.1"}, gpu=False, cpu_index=closed_url)
    assert args == ["torch==2.9.1"] and "does not answer" in why and "default index" in why


def test_overrides_and_gpu(closed_url):
    assert torch_source.torch_source({}, gpu=True, cpu_index=closed_url)[0] == ["torch"]
    assert torch_source.torch_source({"TORCH_INDEX_URL": "https://mirror/cpu"}, gpu=False, cpu_index=closed_url)[0] \
        == [f"torch=={torch_source.DEFAULT_VERSION}", "--index-url", "https://mirror/cpu"]
    assert torch_source.torch_source({"TORCH_SPEC": "torch==2.6.0"}, gpu=True)[0] == ["torch==2.6.0"]
