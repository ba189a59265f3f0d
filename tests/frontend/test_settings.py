"""Settings from a TOML file, the environment and the command line."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from frontend.config import ModelSettings
from frontend.settings import ConfigError, load, render
from tests.agent import agent_context, edge_agent
from tests.integration.test_rpcs import colored_image, inline_request


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_and_their_sources() -> None:
    settings = load(None, {}, {})
    assert settings.config.backlog == 8
    assert settings.sources["backlog"] == "default"
    assert settings.config_file is None


def test_file_then_environment_then_command_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'socket = "unix:///tmp/from-file.sock"\n'
        'model_dir = "/srv/models"\n'
        "backlog = 3\n"
        'socket_mode = "0600"\n'
        "grace_s = 2.5\n",
    )
    env = {"EDGE_AGENT_MODEL_DIR": "/env/models", "EDGE_AGENT_LOG_LEVEL": "DEBUG"}
    settings = load(path, env, {"backlog": 5})
    config = settings.config
    assert config.socket == "unix:///tmp/from-file.sock"
    assert config.model_dir == Path("/env/models")
    assert config.backlog == 5
    assert config.socket_mode == 0o600
    assert config.grace_s == 2.5
    assert config.log_level == "DEBUG"
    assert settings.sources["socket"] == str(path)
    assert settings.sources["model_dir"] == "EDGE_AGENT_MODEL_DIR"
    assert settings.sources["backlog"] == "command line"
    assert settings.sources["request_timeout_s"] == "default"


def test_a_bare_socket_path_from_file_or_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'socket = "/run/a/agent.sock"\n')
    assert load(path, {}, {}).config.socket == "unix:///run/a/agent.sock"
    env = {"EDGE_AGENT_SOCKET": "/run/b.sock"}
    assert load(None, env, {}).config.socket == "unix:///run/b.sock"
    with pytest.raises(ConfigError, match=r"write unix:///path .*\(from EDGE_AGENT"):
        load(None, {"EDGE_AGENT_SOCKET": "agent.sock"}, {})


def test_file_named_by_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "backlog = 2\n")
    assert load(None, {"EDGE_AGENT_CONFIG": str(path)}, {}).config.backlog == 2


def test_model_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "backlog = 6\nrequest_timeout_s = 20\n"
        "[models.brick-texture]\nautostart = true\ncores = 2\nbacklog = 1\n"
        "[models.other]\nrequest_timeout_s = 5\n",
    )
    config = load(path, {}, {"autostart": ["third"]}).config
    assert config.model("brick-texture") == ModelSettings(
        autostart=True, cores=2, backlog=1, request_timeout_s=20
    )
    assert config.model("other") == ModelSettings(
        autostart=False, cores=None, backlog=6, request_timeout_s=5
    )
    assert config.autostart_models == ("third", "brick-texture")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bakclog = 3\n", "unknown key 'bakclog'"),
        ('backlog = "3"\n', "backlog is a string '3'; it must be an integer"),
        ("grace_s = true\n", "grace_s must not be true or false"),
        ("[models.a]\nbaclog = 1\n", "[models.a]: unknown key 'baclog'"),
        ("[models.a]\nautostart = 1\n", "autostart is an integer 1"),
        ("[models.a]\ncores = 0\n", "[models.a]: cores must be at least 1"),
        ("backlog = 0\n", "backlog must be at least 1 (from"),
        ('socket_mode = "rw"\n', "not an octal file mode"),
        ("socket_mode = 660\n", "the integer 660; write the octal mode as a string"),
        ("socket = [\n", "is not valid TOML"),
        ("socket_mode = 0660\n", 'write socket_mode as a string, such as "0660"'),
        ("grace_s = 1\n socket_mode = 0600 # ok\n", 'such as "0660"'),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), {}, {})
    assert message in str(info.value)


def test_other_toml_errors_get_no_socket_mode_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, 'socket_mode = "0660"\nbacklog = 08\n'), {}, {})
    assert "is not valid TOML" in str(info.value)
    assert "socket_mode" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml", {}, {})


def test_render_shows_values_and_sources(tmp_path: Path) -> None:
    path = write(tmp_path, "backlog = 3\n[models.m]\nautostart = true\n")
    text = render(load(path, {"EDGE_AGENT_SOCKET": "unix:///x.sock"}, {}))
    assert f"backlog = 3  # {path}" in text
    assert 'socket = "unix:///x.sock"  # EDGE_AGENT_SOCKET' in text
    assert "request_timeout_s = 30.0  # default" in text
    assert text.startswith(
        "# Effective edge-agent configuration.\n"
        "# Beside each value: where it came from.\n"
    )
    assert f"[models.m]\nautostart = true  # {path}\n" in text


def test_render_says_where_model_values_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, "backlog = 6\n[models.m]\ncores = 2\nbacklog = 1\n")
    text = render(load(path, {}, {"autostart": ["m", "n"], "grace_s": 1.0}))
    m = text.split("[models.m]\n")[1].split("\n\n")[0].splitlines()
    assert m == [
        "autostart = true  # command line",
        f"cores = 2  # {path}",
        f"backlog = 1  # {path}",
        "request_timeout_s = 30.0  # the agent's request_timeout_s (default)",
    ]
    n = text.split("[models.n]\n")[1].splitlines()
    assert n == [
        "autostart = true  # command line",
        "# cores: the manifest's",
        f"backlog = 6  # the agent's backlog ({path})",
        "request_timeout_s = 30.0  # the agent's request_timeout_s (default)",
    ]


def test_config_print_command(tmp_path: Path) -> None:
    path = write(tmp_path, "backlog = 4\n")
    done = edge_agent("config", "--print", "--config", str(path), "--grace-s", "3")
    assert done.returncode == 0, done.stderr
    assert f"backlog = 4  # {path}" in done.stdout
    assert "grace_s = 3.0  # command line" in done.stdout


def test_serve_with_a_bad_file_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "bakclog = 3\n")
    done = edge_agent(
        "serve", "--config", str(path), "--socket", f"unix://{tmp_path}/s"
    )
    assert done.returncode == 2
    assert "unknown key 'bakclog'" in done.stderr


def test_per_model_settings_reach_the_agent(model_dir: Path, tmp_path: Path) -> None:
    """[models.slow] autostart and backlog = 1 act on a real agent."""
    path = write(
        tmp_path, "backlog = 8\n[models.slow]\nautostart = true\nbacklog = 1\n"
    )
    with agent_context(model_dir, "--config", str(path)) as agent:
        agent.wait_status("slow", "RUNNING")
        busy = colored_image()
        busy[0, 0, 0] = 40  # about 1.3 s of work: the two overlap
        calls = [
            agent.stub.DetectAnomalies.future(inline_request("slow", busy), timeout=30)
            for _ in range(2)
        ]
        codes = []
        for call in calls:
            try:
                call.result(timeout=30)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
        assert sorted(codes, key=str) == sorted(
            [grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED], key=str
        )
