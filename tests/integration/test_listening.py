"""Where the agent listens: the socket file's mode, and TCP on loopback."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import grpc
import psutil

from frontend._proto import edge_agent_pb2 as pb2
from frontend._proto import edge_agent_pb2_grpc as pb2_grpc
from tests.agent import agent_context, edge_agent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_tcp_on_loopback_and_socket_mode(model_dir: Path) -> None:
    port = free_port()
    with agent_context(model_dir, "--tcp", str(port), "--socket-mode", "0600") as agent:
        mode = stat.S_IMODE(agent.socket_path.stat().st_mode)
        assert mode == 0o600
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.EdgeAgentStub(channel)
            reply = stub.ListModels(pb2.ListModelsRequest(), timeout=10)
        names = {m.model_component for m in reply.models}
        assert {"red-mean", "color-seg"} <= names
        # A bare port binds loopback only: nothing listens on other addresses.
        listening = {
            conn.laddr.ip
            for conn in psutil.Process(agent.pid).net_connections("tcp")
            if conn.status == "LISTEN"
        }
        assert listening
        assert listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening


def test_default_socket_mode_is_0660(model_dir: Path) -> None:
    with agent_context(model_dir) as agent:
        assert stat.S_IMODE(agent.socket_path.stat().st_mode) == 0o660


def test_a_bare_socket_path_means_unix(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    with agent_context(model_dir, "--socket", str(path), socket_path=path) as agent:
        assert f"Agent ready on unix://{path}" in agent.log()
        done = edge_agent("models", "--socket", str(path))
        assert done.returncode == 0, done.stderr
        assert "red-mean" in done.stdout
    done = edge_agent("models", "--socket", "agent.sock")
    assert done.returncode == 2
    assert "write unix:///path (or /path) for a Unix socket" in done.stderr


def test_a_missing_socket_directory_is_created_with_a_warning(
    model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "new" / "run" / "agent.sock"
    with agent_context(model_dir, socket_path=path) as agent:
        line = next(x for x in agent.log().splitlines() if "directory" in x)
        assert "WARNING" in line
        assert f"Creating the socket's directory {path.parent}, which did" in line
    with agent_context(model_dir, socket_path=path) as agent:
        assert "Creating the socket's directory" not in agent.log()
