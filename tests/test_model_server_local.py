"""`movierec serve-model` as a user runs it: a relative --store path, and two model servers on one machine.

TorchServe runs in its own run folder, so a relative store path must be resolved before it starts; and it
always opens two gRPC servers, whose default ports (7070, 7071) would collide between two servers.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import httpx
import pytest

from movierec.serving.torchserve.archive import build_archive, read_properties
from movierec.serving.torchserve.local import local_config, start_torchserve


def free_port_block(size: int = 5) -> int:
    """A first port p with p .. p + size - 1 free on loopback (inference, management, metrics, 2 × gRPC)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + size > 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + size):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no block of free ports")


def test_local_config_puts_every_listener_on_the_given_host_and_ports(tmp_path: Path) -> None:
    props = read_properties(local_config(tmp_path / "store", "127.0.0.1", (9100, 9101, 9102)))
    assert props["inference_address"] == "http://127.0.0.1:9100"
    assert props["management_address"] == "http://127.0.0.1:9101"
    assert props["metrics_address"] == "http://127.0.0.1:9102"
    assert (props["grpc_inference_port"], props["grpc_management_port"]) == ("9103", "9104")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert Path(props["model_store"]).is_absolute()


@pytest.mark.slow
def test_two_servers_side_by_side_from_a_relative_store(
    pattern_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("java") is None:
        pytest.skip("java is not installed: TorchServe's frontend needs Java 11+ (apt-get install openjdk-17-jre-headless)")
    build_archive(pattern_model, tmp_path / "model-store")
    monkeypatch.chdir(tmp_path)
    servers = []
    try:
        for name in ("a", "b"):
            port = free_port_block()
            servers.append(start_torchserve(Path("model-store"), port, run_dir=tmp_path / f"run-{name}"))
            servers[-1].wait_ready(timeout=120)
        for server in servers:
            assert httpx.get(f"{server.inference_url}/ping", timeout=5).json()["status"] == "Healthy"
    finally:
        for server in servers:
            server.stop()
