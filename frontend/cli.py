"""The ``edge-agent`` command: serve, call the agent, build models."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from frontend.config import (
    DEFAULT_SOCKET,
    INLINE_TRANSPORTS,
    LOG_FORMATS,
    AgentConfig,
    socket_address,
)
from frontend.settings import ENV_CONFIG, ENV_OVERRIDES, ConfigError, Settings
from frontend.settings import load as load_settings
from frontend.settings import render as render_settings

log = logging.getLogger(__name__)

# The agent's own setting; the client commands default to it too.
ENV_SOCKET = ENV_OVERRIDES["socket"]


def _agent_flags(p: argparse.ArgumentParser) -> None:
    """Flags that set agent settings; only those given reach the settings."""
    defaults = AgentConfig()
    omit = argparse.SUPPRESS
    p.add_argument(
        "--config", type=Path, default=None, metavar="PATH",
        help=f"TOML configuration file (also ${ENV_CONFIG})",
    )  # fmt: skip
    p.add_argument(
        "--socket", dest="socket", default=omit,
        help=f"gRPC address (default {defaults.socket})",
    )  # fmt: skip
    p.add_argument(
        "--tcp", dest="tcp_address", default=omit, metavar="[HOST:]PORT",
        help="also listen on TCP; a bare port binds 127.0.0.1",
    )  # fmt: skip
    p.add_argument(
        "--socket-mode", dest="socket_mode", default=omit,
        help="socket file mode, octal (default 0660)",
    )  # fmt: skip
    p.add_argument("--model-dir", dest="model_dir", default=omit)
    p.add_argument(
        "--start", dest="autostart", action="append", default=omit,
        metavar="MODEL", help="start this model component at launch (repeatable)",
    )  # fmt: skip
    for flag, kind in (
        ("--grace-s", float),
        ("--backlog", int),
        ("--request-timeout-s", float),
        ("--heartbeat-timeout-s", float),
    ):
        dest = flag[2:].replace("-", "_")
        p.add_argument(
            flag, dest=dest, type=kind, default=omit,
            help=f"default {getattr(defaults, dest):g}",
        )  # fmt: skip
    p.add_argument(
        "--inline-transport", dest="inline_transport", choices=INLINE_TRANSPORTS,
        default=omit,
    )  # fmt: skip
    p.add_argument("--log-level", dest="log_level", default=omit)
    p.add_argument("--log-format", dest="log_format", choices=LOG_FORMATS, default=omit)
    p.add_argument(
        "--metrics", dest="metrics_address", default=omit, metavar="[HOST:]PORT",
        help="serve Prometheus metrics; a bare port binds 127.0.0.1",
    )  # fmt: skip


def _address(value: str) -> str:
    try:
        return socket_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _serve_parser(sub: Any) -> None:
    _agent_flags(sub.add_parser("serve", help="run the agent in the foreground"))
    p = sub.add_parser(
        "config", help="show the effective configuration and where it came from"
    )
    _agent_flags(p)
    p.add_argument("--print", action="store_true", required=True)


def _client_parsers(sub: Any) -> None:
    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--socket", default=None, type=_address,
            help="agent address: unix:///path (or /path) or host:port "
            f"(default ${ENV_SOCKET}, else {DEFAULT_SOCKET})",
        )  # fmt: skip
        return p

    p = add("detect", "score an image file (PNG, JPEG) and print JSON")
    p.add_argument("image", type=Path)
    p.add_argument("--model", help="model component (default: the one running)")
    p.add_argument("--inline", action="store_true", help="send bytes, not shm")
    p.add_argument("--mask", type=Path, help="save the anomaly mask as PNG")
    p.add_argument(
        "--segment-mode", default="0600", metavar="MODE",
        help="mode of our segments; 0660 for an agent run as another user",
    )  # fmt: skip
    p.add_argument(
        "--mask-in-segment", action="store_true",
        help="have the agent write the mask into a segment of ours",
    )  # fmt: skip
    add("models", "list the model components")
    p = add("start", "start a model component")
    p.add_argument("model")
    p.add_argument("--wait", action="store_true", help="wait until RUNNING")
    p = add("stop", "stop a running model component")
    p.add_argument("model")
    p = add("describe", "describe a model component")
    p.add_argument("model")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Visual anomaly detection served over the Edge Agent API.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _client_parsers(sub)
    sub.add_parser(
        "train", help="fit a model component from good photos", add_help=False
    )
    sub.add_parser(
        "evaluate",
        help="measure a component on an MVTec-layout folder",
        add_help=False,
    )
    sub.add_parser(
        "import-anomalib",
        help="wrap an anomalib ONNX export into a component",
        add_help=False,
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    given = {
        k: v for k, v in vars(args).items() if k not in ("command", "config", "print")
    }
    return load_settings(args.config, os.environ, given)


def _run_serve(args: argparse.Namespace) -> int:
    if args.command == "serve":
        # A reload (SIGHUP) that comes before the agent's handler is
        # installed, while it imports and starts, must not kill it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from frontend.server import EXIT_CONFIG_ERROR, StartupError, serve
    from shared.logs import configure_logging
    from shared.malloc import keep_large_buffers

    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"edge-agent {args.command}: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.command == "config":
        print(render_settings(settings), end="")
        return 0
    config = settings.config
    configure_logging(config.log_level, role="frontend", fmt=config.log_format)
    keep_large_buffers()
    if settings.config_file is not None:
        log.info("Configuration from %s", settings.config_file)
    try:
        return asyncio.run(serve(config))
    except StartupError as exc:
        log.error("Cannot start: %s", exc)
        return EXIT_CONFIG_ERROR


def _read_image(path: Path) -> Any:
    from shared.images import ImageError, load_rgb

    try:
        return load_rgb(path)
    except ImageError as exc:
        raise SystemExit(f"edge-agent: {exc}") from None


def _save_mask(mask: Any, path: Path) -> None:
    from PIL import Image

    try:
        Image.fromarray(mask).save(path, format="PNG")
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"edge-agent: cannot save the mask as {path}: {exc} (give a .png path "
            "in an existing folder)"
        ) from None


def _running_model(client: Any) -> str:
    running = [
        m["model_component"] for m in client.models() if m["status"] == "RUNNING"
    ]
    if len(running) != 1:
        raise SystemExit(
            "edge-agent: give --model; running models: "
            + (", ".join(running) or "none")
        )
    return str(running[0])


def _client_address(args: argparse.Namespace) -> str:
    """``--socket``, else ``$EDGE_AGENT_SOCKET``, else the default."""
    if args.socket is not None:
        return str(args.socket)
    value = os.environ.get(ENV_SOCKET)
    if value is None:
        return DEFAULT_SOCKET
    try:
        return socket_address(value, ENV_SOCKET)
    except ValueError as exc:
        print(f"edge-agent {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _run_client(args: argparse.Namespace, address: str) -> int:
    from frontend.client import EdgeAgentClient

    mask = getattr(args, "mask", None)
    if mask is not None and mask.suffix.lower() != ".png":
        # A lossy format would smear the label colors the mask is made of.
        print(
            f"edge-agent detect: --mask {mask}: the mask is saved as PNG only; "
            "give a path ending in .png",
            file=sys.stderr,
        )
        return 2
    if mask is not None and not mask.absolute().parent.is_dir():
        print(
            f"edge-agent detect: --mask {mask}: the folder {mask.absolute().parent} "
            "does not exist; give a .png path in an existing folder",
            file=sys.stderr,
        )
        return 2
    mode = int(getattr(args, "segment_mode", "0600"), 8)
    with EdgeAgentClient(address, segment_mode=mode) as client:
        if args.command == "detect":
            image = _read_image(args.image)
            model = args.model or _running_model(client)
            result = client.detect(
                model,
                image,
                inline=args.inline,
                want_mask_in_segment=args.mask_in_segment,
            )
            print(json.dumps(result.as_dict(), indent=2))
            if args.mask is not None:
                if result.mask is None:
                    print(
                        f"edge-agent: model {model} returns no mask (it is a "
                        "classification model); nothing saved",
                        file=sys.stderr,
                    )
                else:
                    _save_mask(result.mask, args.mask)
        elif args.command == "models":
            print(json.dumps(client.models(), indent=2))
        elif args.command == "describe":
            print(json.dumps(client.describe(args.model), indent=2))
        elif args.command == "start":
            print(client.start(args.model))
            if args.wait:
                return _wait_running(client, args.model)
        elif args.command == "stop":
            print(client.stop(args.model))
    return 0


def _wait_running(client: Any, model: str, limit_s: float = 180.0) -> int:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        description = client.describe(model)
        if description["status"] != "STARTING":
            print(json.dumps(description, indent=2))
            return 0 if description["status"] == "RUNNING" else 1
        time.sleep(0.5)
    print(f"edge-agent: {model} still STARTING after {limit_s:g} s", file=sys.stderr)
    return 1


_MODEL_TOOLS = {
    "train": "trainer.cli",
    "evaluate": "trainer.evaluate",
    "import-anomalib": "trainer.anomalib_import",
}


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _MODEL_TOOLS:
        # The model tools parse their own arguments; import only what runs.
        module = importlib.import_module(_MODEL_TOOLS[argv[0]])
        tool_main: Callable[[list[str]], int] = module.main
        return tool_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command in ("serve", "config"):
        return _run_serve(args)
    address = _client_address(args)
    # A client killed by SIGTERM still runs its finally blocks, so the
    # segments it created are removed.
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        return _run_client(args, address)
    except grpc.RpcError as exc:
        code = exc.code()
        details = exc.details()
        print(f"edge-agent: {code.name}: {details}", file=sys.stderr)
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in str(details):
            print(
                f"edge-agent: no agent answers at {address}; start "
                "one (./run.sh or edge-agent serve), or name its socket with "
                f"--socket or {ENV_SOCKET}",
                file=sys.stderr,
            )
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (head, a closed pager) left; that is no error of ours.
        # Point stdout at /dev/null so the flush at exit does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
