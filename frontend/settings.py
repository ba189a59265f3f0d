"""Where the agent's settings come from, and which source won.

Sources, later ones winning: the defaults in ``AgentConfig``, one TOML file
(``--config PATH`` or ``$EDGE_AGENT_CONFIG``), a few environment variables
for what deployments change, and the command line. Unknown keys and values
of the wrong type stop the start with a message naming the key.

The file's top level holds agent-wide settings; a table per model
component holds that model's (``[models.brick-texture]`` with
``autostart``, ``cores``, ``backlog``, ``request_timeout_s``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frontend.config import AgentConfig, ModelSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_CONFIG = "EDGE_AGENT_CONFIG"
# The settings a deployment typically changes, by environment variable.
ENV_OVERRIDES = {
    "socket": "EDGE_AGENT_SOCKET",
    "model_dir": "EDGE_AGENT_MODEL_DIR",
    "tcp_address": "EDGE_AGENT_TCP_ADDRESS",
    "log_level": "EDGE_AGENT_LOG_LEVEL",
}
DEFAULT = "default"

# Keys the file may hold, with the TOML types each takes.
_AGENT_KEYS: dict[str, tuple[type, ...]] = {
    "socket": (str,),
    "tcp_address": (str,),
    "socket_mode": (str, int),
    "model_dir": (str,),
    "grace_s": (int, float),
    "backlog": (int,),
    "request_timeout_s": (int, float),
    "max_concurrent_rpcs": (int,),
    "heartbeat_interval_s": (int, float),
    "heartbeat_timeout_s": (int, float),
    "start_timeout_s": (int, float),
    "stop_timeout_s": (int, float),
    "restart_backoff_s": (int, float),
    "restart_backoff_max_s": (int, float),
    "max_restarts": (int,),
    "restart_window_s": (int, float),
    "max_message_bytes": (int,),
    "inline_transport": (str,),
    "log_level": (str,),
    "log_format": (str,),
    "metrics_address": (str,),
}
_MODEL_KEYS: dict[str, tuple[type, ...]] = {
    "autostart": (bool,),
    "cores": (int,),
    "backlog": (int,),
    "request_timeout_s": (int, float),
}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and its source."""


@dataclass(frozen=True)
class Settings:
    config: AgentConfig
    # Where each agent-wide value came from: "default", the file's path,
    # an environment variable's name, or "command line".
    sources: dict[str, str]
    config_file: Path | None


def _check_type(key: str, value: Any, kinds: tuple[type, ...], where: str) -> None:
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where}: {key} must not be true or false")
    if not isinstance(value, kinds):
        names = " or ".join(_TOML_NAMES.get(k, k.__name__) for k in kinds)
        raise ConfigError(
            f"{where}: {key} is {_TOML_NAMES.get(type(value), type(value).__name__)}"
            f" {value!r}; it must be {names}"
        )


_TOML_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


def _coerce(key: str, value: Any) -> Any:
    """Turn a file, environment or command-line value into the field's type."""
    if key == "model_dir":
        return Path(value)
    if key == "socket_mode":
        if isinstance(value, int):
            if not 0 <= value <= 0o777:
                # 660 written without quotes reads as decimal 660.
                raise ConfigError(
                    f"socket_mode is the integer {value}; write the octal mode "
                    'as a string, such as "0660"'
                )
            return value
        try:
            return int(str(value), 8)
        except ValueError:
            raise ConfigError(
                f"socket_mode {value!r} is not an octal file mode such as 0660"
            ) from None
    if key in ("tcp_address", "metrics_address") and value == "":
        return None
    return value


def read_file(path: Path) -> dict[str, Any]:
    """The TOML file at ``path``, or ConfigError saying why not."""
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        hint = _decode_hint(path, exc)
        raise ConfigError(f"{path} is not valid TOML: {exc}{hint}") from exc
    return data


_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_OCTAL_MODE = re.compile(r"\s*socket_mode\s*=\s*0")


def _decode_hint(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    """Advice for a mistake the parser's message does not explain."""
    found = _LINE.search(str(exc))
    if found is None:
        return ""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    number = int(found.group(1))
    if number <= len(lines) and _OCTAL_MODE.match(lines[number - 1]):
        # TOML has no leading-zero integers: 0660 is no number at all.
        return '; write socket_mode as a string, such as "0660"'
    return ""


def _file_values(
    data: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, ModelSettings]]:
    agent: dict[str, Any] = {}
    models: dict[str, ModelSettings] = {}
    for key, value in data.items():
        if key == "models":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: models must be a table of tables")
            for name, table in value.items():
                models[name] = _model_settings(name, table, where)
            continue
        if key not in _AGENT_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r}; known keys: "
                f"{', '.join(sorted(_AGENT_KEYS))}, and [models.NAME] tables"
            )
        _check_type(key, value, _AGENT_KEYS[key], where)
        agent[key] = _coerce(key, value)
    return agent, models


def _model_settings(name: str, table: Any, where: str) -> ModelSettings:
    place = f"{where}: [models.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{place} must be a table")
    for key, value in table.items():
        if key not in _MODEL_KEYS:
            raise ConfigError(
                f"{place}: unknown key {key!r}; known keys: "
                f"{', '.join(sorted(_MODEL_KEYS))}"
            )
        _check_type(key, value, _MODEL_KEYS[key], place)
    try:
        return ModelSettings(**table)
    except ValueError as exc:
        raise ConfigError(f"{place}: {exc}") from None


def load(
    config_file: Path | None,
    environ: Mapping[str, str],
    command_line: Mapping[str, Any],
) -> Settings:
    """Settings from every source; ``command_line`` holds only given flags."""
    path = config_file
    if path is None and environ.get(ENV_CONFIG):
        path = Path(environ[ENV_CONFIG])
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    models: dict[str, ModelSettings] = {}
    if path is not None:
        values, models = _file_values(read_file(path), str(path))
        sources = dict.fromkeys(values, str(path))
    for key, variable in ENV_OVERRIDES.items():
        if environ.get(variable) is not None:
            values[key] = _coerce(key, environ[variable])
            sources[key] = variable
    autostart: tuple[str, ...] = ()
    for key, value in command_line.items():
        if key == "autostart":
            autostart = tuple(value)
            sources[key] = "command line"
            continue
        values[key] = _coerce(key, value)
        sources[key] = "command line"
    try:
        config = AgentConfig(**values, autostart=autostart, models=models)
    except ValueError as exc:
        key = str(exc).split(" ", 1)[0]
        origin = sources.get(key, DEFAULT)
        raise ConfigError(f"{exc} (from {origin})") from None
    every = [f.name for f in dataclasses.fields(AgentConfig) if f.name != "models"]
    return Settings(
        config=config,
        sources={name: sources.get(name, DEFAULT) for name in every},
        config_file=path,
    )


def render(settings: Settings) -> str:
    """The effective configuration as TOML, each value's source beside it."""
    config = settings.config
    lines = [
        "# Effective edge-agent configuration.",
        "# Beside each value: where it came from.",
    ]
    if settings.config_file is not None:
        lines.append(f"# File: {settings.config_file}")
    for name, source in settings.sources.items():
        if name == "autostart":
            continue
        lines.append(f"{name} = {_toml(name, getattr(config, name))}  # {source}")
    for name in sorted(set(config.models) | set(config.autostart)):
        lines += ["", f"[models.{_key(name)}]", *_model_lines(settings, name)]
    return "\n".join(lines) + "\n"


def _model_lines(settings: Settings, name: str) -> list[str]:
    """A model's table; its own values come from the file, the rest inherit."""
    config = settings.config
    own = config.models.get(name, ModelSettings())
    model = config.model(name)
    if name in config.autostart:
        source = settings.sources["autostart"]
    else:
        source = str(settings.config_file) if own.autostart else DEFAULT
    lines = [f"autostart = {_toml('autostart', model.autostart)}  # {source}"]
    if own.cores is not None:
        lines.append(f"cores = {own.cores}  # {settings.config_file}")
    else:
        lines.append("# cores: the manifest's")
    for key in ("backlog", "request_timeout_s"):
        value = getattr(model, key)
        if getattr(own, key) is not None:
            source = str(settings.config_file)
        else:
            source = f"the agent's {key} ({settings.sources[key]})"
        lines.append(f"{key} = {_toml(key, value)}  # {source}")
    return lines


def _key(name: str) -> str:
    bare = name.replace("-", "").replace("_", "").isalnum()
    return name if bare else f'"{name}"'


def _toml(name: str, value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if name == "socket_mode":
        return f'"{value:04o}"'
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def environ() -> Mapping[str, str]:
    return os.environ
