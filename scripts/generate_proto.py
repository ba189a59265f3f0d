"""Regenerate the Python code for proto/edge-agent.proto.

Run: ``.venv/bin/python scripts/generate_proto.py`` (or ``./run.sh proto``).
The output lands in ``frontend/_proto``; tests fail when it is stale.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "frontend/_proto"
GENERATED = (
    "edge_agent_pb2.py",
    "edge_agent_pb2.pyi",
    "edge_agent_pb2_grpc.py",
    "edge_agent_pb2_grpc.pyi",
)


def generate(out_dir: Path) -> None:
    """Write the generated files under ``out_dir/frontend/_proto``."""
    (out_dir / PACKAGE).mkdir(parents=True, exist_ok=True)
    scripts = sysconfig.get_path("scripts")
    # protoc finds the mypy plugins on PATH, beside this interpreter.
    os.environ["PATH"] = f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"
    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE}={ROOT / 'proto'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        str(ROOT / "proto" / "edge-agent.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on proto/edge-agent.proto")


if __name__ == "__main__":
    generate(ROOT)
    sys.exit(0)
