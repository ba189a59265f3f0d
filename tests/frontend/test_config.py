"""Settings that would leave the agent useless stop it, naming the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from frontend.config import AgentConfig, parse_tcp_address
from tests.agent import ROOT, agent_context, wait_until


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"backlog": 0}, "backlog must be at least 1"),
        ({"request_timeout_s": 0}, "request_timeout_s must be more than 0"),
        ({"grace_s": -1}, "grace_s must not be negative"),
        ({"heartbeat_timeout_s": 1}, "heartbeat_timeout_s must be at least twice"),
        ({"socket_mode": 0o000}, "lets the owner read and write"),
        ({"socket_mode": 0o1777}, "socket_mode 1777"),
        ({"log_level": "TRACE"}, "log_level 'TRACE' is not one of"),
        ({"inline_transport": "pigeon"}, "inline_transport 'pigeon'"),
        ({"tcp_address": "127.0.0.1:116513"}, "port from 1 to 65535"),
        ({"tcp_address": "localhost:"}, "port from 1 to 65535"),
        ({"max_message_bytes": 4 << 20}, "at least 64 MiB"),
        ({"socket": "tmp/agent.sock"}, "write unix:///path"),
        ({"socket": "unix://tmp/agent.sock"}, "write unix:///path"),
        ({"socket": "localhost"}, "or host:port for TCP"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        AgentConfig(**settings)  # type: ignore[arg-type]


def test_tcp_addresses() -> None:
    assert parse_tcp_address("50051") == ("127.0.0.1", 50051)
    assert parse_tcp_address("0.0.0.0:50051") == ("0.0.0.0", 50051)
    assert parse_tcp_address("[::1]:7") == ("[::1]", 7)


def test_socket_path() -> None:
    assert AgentConfig(socket="unix:///run/a.sock").socket_path == Path("/run/a.sock")
    assert AgentConfig(socket="127.0.0.1:5").socket_path is None


def test_a_bare_path_is_a_unix_socket() -> None:
    config = AgentConfig(socket="/run/a.sock")
    assert config.socket == "unix:///run/a.sock"
    assert config.socket_path == Path("/run/a.sock")
    for directory in ("/", "unix:///", "/run/edge-agent/"):
        with pytest.raises(ValueError, match="names a directory"):
            AgentConfig(socket=directory)


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    socket = f"unix://{tmp_path}/agent.sock"
    return subprocess.run(
        [sys.executable, "-m", "frontend", "serve", "--socket", socket, *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log-level", "TRACE"], "log_level 'TRACE'"),
        (["--socket-mode", "9999"], "not an octal file mode"),
        (["--tcp", "99999"], "port from 1 to 65535"),
        (["--request-timeout-s", "0"], "request_timeout_s"),
        (["--start", "nope"], "cannot start nope: no such component"),
        (["--socket", "agent.sock"], "write unix:///path (or /path)"),
    ],
)
def test_configuration_errors_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Exit status 2 tells a supervisor that restarting will not help."""
    (tmp_path / "models").mkdir()
    done = serve(tmp_path, "--model-dir", str(tmp_path / "models"), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert message in done.stderr.splitlines()[-1]
    assert "Agent stopped" not in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "agent.sock").exists()


def test_settings_for_a_missing_component_are_reported(
    model_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[models.red-maen]\nbacklog = 2\n")
    with agent_context(model_dir, "--config", str(config)) as agent:
        wait_until(lambda: "red-maen" in agent.log(), 10, "the warning")
        line = next(x for x in agent.log().splitlines() if "red-maen" in x)
    assert "WARNING" in line
    assert f"{model_dir} has no such component (found: " in line
    assert "red-mean" in line
