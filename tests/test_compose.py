"""docker-compose.yml is valid against the Compose specification and runs real commands."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import typer
import yaml

from collector.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_matches_the_compose_spec() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _cli_commands() -> set[tuple[str, ...]]:
    group = typer.main.get_command(app)
    found: set[tuple[str, ...]] = set()
    for name, command in group.commands.items():
        found.add((name,))
        for sub in getattr(command, "commands", {}):
            found.add((name, sub))
    return found


def _invocations(command: list[str] | str) -> list[list[str]]:
    """The foundry-watch invocations in a service command (exec form or `sh -c` chains)."""
    if isinstance(command, str):
        command = shlex.split(command)
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in command[2].split("&&")]
    return [["foundry-watch", *command]]  # exec form goes through the image's ENTRYPOINT


def test_every_service_command_exists_in_the_cli() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = _cli_commands()
    services = compose["services"]
    assert {"postgres", "collector", "dashboard", "emulator"} <= set(services)
    assert "healthcheck" in services["postgres"] and services["postgres"]["volumes"]
    assert services["emulator"]["profiles"] == ["emulator"]
    checked = 0
    for name, service in services.items():
        if "command" not in service or name == "postgres":
            continue
        for argv in _invocations(service["command"]):
            assert argv[0] == "foundry-watch", (name, argv)
            words = [w for w in argv[1:] if not w.startswith("-")]
            assert (words[0],) in commands or tuple(words[:2]) in commands, (name, argv)
            checked += 1
    assert checked >= 5  # db upgrade + collect, db upgrade + dashboard, emulator


def test_services_migrate_before_starting() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("collector", "dashboard"):
        steps = _invocations(compose["services"][name]["command"])
        assert steps[0][1:3] == ["db", "upgrade"], name
