"""`foundry-watch doctor` against the emulator: every check green on a healthy estate; a 403 on
one API turns exactly that API's lines red, naming the role to grant, and the exit code to 1;
nothing secret is ever printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.faults import Faults
from emulator.server import EmulatorServer
from tests.collector.test_kill_resume import cli_env, migrated, run_cli

CHECKS = {"token: ARM", "token: metrics", "token: logs", "discovery", "diagnostic setting"}
SOURCES = {"metrics", "logs", "costs"}


def doctor(server: EmulatorServer, tmp_path: Path, *flags: str) -> tuple[int, str, list[list[str]]]:
    url = migrated(f"sqlite:///{tmp_path / 'doctor.db'}")
    # wide enough that no detail wraps: one table line per check
    env = cli_env(server, url, COLUMNS="1000", FOUNDRY_WATCH_LOG_LEVEL="INFO")
    done = run_cli([*flags, "doctor"], env, tmp_path / "doctor.log", timeout=120)
    rows = [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in done.output.splitlines()
        if line.startswith("│")
    ]
    return done.returncode, done.output, rows


def assert_no_secrets(server: EmulatorServer, output: str) -> None:
    secrets = {"IDENTITY_HEADER": server.state.identity_header}
    secrets.update({f"api key of {name}": key for name, key in server.state.api_keys.items()})
    for what, value in secrets.items():
        assert value not in output, f"the doctor printed the {what}"
    # every token the emulator issues starts with this; a bearer header would show it
    assert "fwemu." not in output, "the doctor printed an access token"


def test_doctor_all_green(emulator: EmulatorServer, faults: Faults, tmp_path: Path) -> None:
    code, output, rows = doctor(emulator, tmp_path, "--verbose")  # DEBUG logs: most to leak
    assert code == 0, output[-3000:]
    assert {r[0] for r in rows} == CHECKS | SOURCES, rows
    assert all(r[2] == "ok" for r in rows), [r for r in rows if r[2] != "ok"]
    world = emulator.world
    assert sum(r[0] == "diagnostic setting" for r in rows) == len(world.resources)
    assert sum(r[0] == "costs" for r in rows) == len(world.subscriptions)
    assert_no_secrets(emulator, output)


@pytest.mark.parametrize(
    ("endpoint", "role"),
    [
        ("metrics", "Monitoring Reader"),
        ("logs", "Log Analytics Reader"),
        ("costs", "Cost Management Reader"),
    ],
)
def test_doctor_names_the_missing_role(
    emulator: EmulatorServer, faults: Faults, tmp_path: Path, endpoint: str, role: str
) -> None:
    rule = faults.add(endpoint=endpoint, kind="error", status=403, count=None)
    code, output, rows = doctor(emulator, tmp_path)
    assert rule.fired > 0, "the doctor never called the faulted API"
    assert code == 1, output[-3000:]
    red = [r for r in rows if r[0] == endpoint]
    assert red, rows
    for name, scope, result, detail in red:
        assert result == "missing", (name, scope, result, detail)
        assert "403" in detail and f"grant {role}" in detail, detail
    others = [r for r in rows if r[0] != endpoint]
    assert {r[0] for r in others} == (CHECKS | SOURCES) - {endpoint}, rows
    assert all(r[2] == "ok" for r in others), [r for r in others if r[2] != "ok"]
    assert_no_secrets(emulator, output)
