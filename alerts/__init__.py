"""Budget and operational alerts (issue 7), run as the ``alerts`` job of the collector.

- ``config``: budgets, rules, channels and options from the config file (pydantic models).
- ``forecast``: month-end forecast, day-of-week-weighted run rate over the last 14 days.
- ``budgets``: month-to-date and forecast spend per budget (from ``collector.spend``).
- ``rules``: 429 rate, error rate, p95 latency per deployment; data staleness.
- ``events``: recording alerts exactly once (unique key of ``alert_events``, insert first).
- ``delivery``: sending each (alert, channel) once, retried on later checks; crash semantics.
- ``channels``: generic JSON / Slack / Teams webhooks and SMTP email.
- ``secrets``: masking and scrubbing of channel secrets in logs, errors and listings.
- ``job``: ``check()`` and the scheduler entry point ``run(ctx)``; ``cli``: ``alerts_app``.
"""
