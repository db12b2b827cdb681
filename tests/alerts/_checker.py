"""One alerts check in its own process: ``python -m tests.alerts._checker URL CONFIG NOW``.

Used by the concurrency test: each process prints ``ready`` once imported and connected, waits
for a line on stdin (the parent sends it to all at once), checks, and prints what it did as JSON.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from alerts.config import load_alert_config
from alerts.job import check
from models.db import make_engine


def main() -> None:
    url, config_json, now_iso = sys.argv[1:4]
    config = load_alert_config(json.loads(config_json))
    engine = make_engine(url)
    now = datetime.fromisoformat(now_iso)
    with engine.connect():
        pass  # connect before the start line, so both processes race on the check itself
    print("ready", flush=True)
    sys.stdin.readline()
    report = check(engine, config, lambda: now)
    sent = [d.channel for d in report.deliveries if d.status == "sent"]
    print(json.dumps({"created": report.created, "sent": sent, "errors": report.errors}))


if __name__ == "__main__":
    main()
