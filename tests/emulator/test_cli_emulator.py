"""`foundry-watch emulator` as a user starts it: prints URL, CA and env, and answers HTTPS."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

EXE = shutil.which("foundry-watch", path=str(Path(sys.executable).parent))


def test_emulator_command_prints_what_clients_need(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [EXE, "emulator", "--port", "0", "--data-dir", str(tmp_path / "emu")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        while not any(line.startswith("export FOUNDRY_WATCH_COGNITIVE_AUDIENCE") for line in lines):
            line = proc.stdout.readline()
            assert line, "emulator exited early:\n" + "".join(lines)
            lines.append(line)
        text = "".join(lines)
        url = next(line.split()[-1] for line in lines if "listening on" in line)
        ca_file = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("CA"))
        assert url.startswith("https://127.0.0.1:")
        assert Path(ca_file).is_file()
        for name in (
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "FOUNDRY_WATCH_ARM_ENDPOINT",
            "FOUNDRY_WATCH_METRICS_ENDPOINT",
            "FOUNDRY_WATCH_LOGS_ENDPOINT",
            "FOUNDRY_WATCH_SUBSCRIPTIONS",
            "FOUNDRY_WATCH_CA_BUNDLE",
        ):
            assert f"export {name}=" in text
        context = ssl.create_default_context(cafile=ca_file)
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"{url}/_emulator/health", context=context) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("emulator did not answer /_emulator/health over HTTPS")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
