"""run.sh's usage line names every command it has."""

from __future__ import annotations

import re
import subprocess

from tests.agent import ROOT


def test_usage_lists_every_command() -> None:
    script = ROOT / "run.sh"
    # The case labels of its dispatch: "  serve)" and the like.
    commands = re.findall(r"^  ([a-z]+)\)$", script.read_text(), re.MULTILINE)
    assert {"serve", "test", "proto", "bundle", "bench"} <= set(commands)
    done = subprocess.run(
        [str(script), "bogus"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    usage = done.stderr.strip()
    assert usage.startswith("usage: ./run.sh ")
    for command in commands:
        assert re.search(rf"\b{command}\b", usage), f"{command} missing: {usage}"
