"""A real agent for integration tests: its own process, socket and models.

``Agent`` starts ``python -m frontend serve`` on a Unix socket in a fresh
temporary directory, waits until it answers, and offers a stub, a client
and helpers to find its workers. Every wait is bounded; teardown stops the
agent by its pid and checks that no worker outlived it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil

from frontend._proto import edge_agent_pb2 as pb2
from frontend._proto import edge_agent_pb2_grpc as pb2_grpc
from frontend.client import MESSAGE_LIMIT, EdgeAgentClient

ROOT = Path(__file__).resolve().parent.parent
# Not inherited from the test run (which may itself run under systemd): a
# test that wants them passes them in ``env``.
SERVICE_MANAGER_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def wait_until(
    condition: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns a truthy value, or fail."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(step_s)


class Agent:
    def __init__(
        self,
        model_dir: Path,
        *args: str,
        socket_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ea-", dir="/tmp"))
        # A test may reuse another agent's path (stale socket, second agent).
        self.socket_path = socket_path or self.dir / "agent.sock"
        self.address = f"unix://{self.socket_path}"
        self.model_dir = model_dir
        self.log_path = self.dir / "agent.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in close()
        command = [
            sys.executable, "-m", "frontend", "serve",
            "--socket", self.address,
            "--model-dir", str(model_dir),
            *args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**_inherited_environment(), **(env or {})},
        )
        self.pid = self.process.pid
        self.channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_receive_message_length", MESSAGE_LIMIT),
                ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ],
        )
        self.stub = pb2_grpc.EdgeAgentStub(self.channel)
        self.client = EdgeAgentClient(self.address, timeout_s=30)
        try:
            wait_until(self._answers, 30, "the agent to answer")
        except BaseException:
            self.close()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"agent exited early:\n{self.log()}")
        if not self.socket_path.exists():
            return False
        try:
            self.stub.ListModels(pb2.ListModelsRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, model: str) -> str:
        reply = self.stub.DescribeModel(
            pb2.DescribeModelRequest(model_component=model), timeout=10
        )
        return str(pb2.ModelStatus.Name(reply.model_description.status))

    def wait_status(self, model: str, status: str, timeout_s: float = 60) -> None:
        wait_until(lambda: self.status(model) == status, timeout_s, f"{model} {status}")

    def start_model(self, model: str) -> None:
        self.stub.StartModel(pb2.StartModelRequest(model_component=model), timeout=10)
        self.wait_status(model, "RUNNING")

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def worker(self, model: str) -> psutil.Process:
        """The live worker process of ``model``."""

        def find() -> psutil.Process | None:
            for child in self.workers():
                try:
                    cmdline = child.cmdline()
                except psutil.NoSuchProcess:
                    continue
                if serves(cmdline, model):
                    return child
            return None

        found: psutil.Process = wait_until(find, 30, f"the worker of {model}")
        return found

    def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM the agent and return its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def close(self) -> None:
        children = self.workers()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.client.close()
        self.channel.close()
        self._log.close()
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            child.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not alive, f"workers outlived the agent: {[p.pid for p in alive]}"


def _inherited_environment() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name not in SERVICE_MANAGER_VARIABLES
    }


def agent_segments(pid: int) -> list[str]:
    """Staging segments in /dev/shm that belong to the agent ``pid``."""
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"edge-agent.{pid}.")]


def edge_agent(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m frontend ARGS`` (the ``edge-agent`` command) to its end."""
    return subprocess.run(
        [sys.executable, "-m", "frontend", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=ROOT,
        env=env,
    )


def serves(cmdline: list[str], model: str) -> bool:
    """Whether a worker's command line names ``model`` (``--model NAME``)."""
    return any(a == "--model" and b == model for a, b in itertools.pairwise(cmdline))


def running_agent(
    model_dir: Path,
    *args: str,
    socket_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Agent]:
    """An agent for a with block; ``env`` adds to the inherited environment."""
    agent = Agent(model_dir, *args, socket_path=socket_path, env=env)
    try:
        yield agent
    finally:
        pid = agent.pid
        agent.close()
        assert agent_segments(pid) == [], "the agent left staging segments"


agent_context = contextlib.contextmanager(running_agent)
