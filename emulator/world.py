"""The seeded synthetic Azure world the emulator serves.

Everything the emulator answers (ARM listings, metrics, logs, costs) is derived from one ``World``
so the APIs agree with each other, exactly like Azure's do: the request that shows up in the
metrics of a minute is the same request that has a log row and is billed the next day.

Traffic is generated lazily, one (deployment, hour) block at a time, from a ``random.Random``
seeded by a stable hash of (seed, resource name, deployment name, hour epoch) — never Python's
``hash()``, which is salted per process — so any minute can be recomputed in isolation and two
processes with the same seed agree. Served calls are appended with :meth:`World.record_live` and
merged into the minute they arrived in.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import math
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from statistics import NormalDist
from typing import Any

__all__ = [
    "API_NAME",
    "OPERATION_NAME",
    "PRICES",
    "Deployment",
    "RequestRecord",
    "Resource",
    "Workspace",
    "World",
    "WorldEvent",
    "floor_minute",
    "stable_uuid",
]

#: Log/metric dimension values for the Anthropic Messages API on Foundry. Azure documents the
#: AOAI values (``ChatCompletions_Create``); the Claude ones are not documented, so these are
#: the emulator's stand-ins and the collector must not depend on their exact spelling.
OPERATION_NAME = "Messages_Create"
API_NAME = "Anthropic Messages API"

#: USD per million tokens (Anthropic list prices; cache multipliers 1.25x / 2x / 0.1x of input).
_BASE_PRICES = {
    "claude-opus-4-5": (5.0, 25.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-haiku-4-5": (1.0, 5.0),
}
PRICES: dict[str, dict[str, float]] = {
    model: {
        "input": inp,
        "output": out,
        "cache_write_5m": inp * 1.25,
        "cache_write_1h": inp * 2.0,
        "cache_read": inp * 0.1,
    }
    for model, (inp, out) in _BASE_PRICES.items()
}

_MODEL_VERSIONS = {
    "claude-opus-4-5": "20251101",
    "claude-sonnet-4-5": "20250929",
    "claude-opus-4-1": "20250805",
    "claude-haiku-4-5": "20251001",
}

# (deployment name, model) in the order each resource receives them; the two custom names
# alternate between resources so both exist in the default world.
_STANDARD = [
    ("claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("claude-haiku-4-5", "claude-haiku-4-5"),
    ("claude-opus-4-5", "claude-opus-4-5"),
    ("claude-opus-4-1", "claude-opus-4-1"),
]
_CUSTOM = [("support-bot-sonnet", "claude-sonnet-4-5"), ("batch-haiku", "claude-haiku-4-5")]

# Relative traffic of a deployment (mean ~1 so requests_per_day stays the per-deployment average).
_WEIGHTS = {
    "claude-sonnet-4-5": 1.6,
    "claude-haiku-4-5": 1.2,
    "claude-opus-4-5": 0.8,
    "claude-opus-4-1": 0.4,
    "support-bot-sonnet": 1.0,
    "batch-haiku": 1.0,
}

# Per-model latency character: (time to first token ms, ms per output token).
_SPEED = {
    "claude-opus-4-1": (1300.0, 30.0),
    "claude-opus-4-5": (1000.0, 20.0),
    "claude-sonnet-4-5": (700.0, 14.0),
    "claude-haiku-4-5": (350.0, 6.0),
}

_REGIONS = [("eastus2", "eus2", -5), ("swedencentral", "swc", 1)]  # name, short, UTC offset h
_FIXED_RESOURCES = [
    ("contoso-foundry-eus2", 0, "rg-foundry-prod"),
    ("contoso-foundry-swc", 0, "rg-foundry-prod"),
    ("contoso-foundry-dev-eus2", 1, "rg-foundry-dev"),
    ("contoso-research-swc", 1, "rg-research"),
]
_IP_PREFIXES = [
    "203.0.113",
    "198.51.100",
    "192.0.2",
    "20.42.17",
    "40.112.9",
    "52.168.44",
    "4.210.3",
    "13.79.101",
]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE = timedelta(minutes=1)
_NORMAL = NormalDist()
_exp = math.exp
_UUID_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID_SET = (0x4 << 76) | (0x2 << 62)


def floor_minute(t: datetime) -> datetime:
    """``t`` in UTC with seconds and microseconds dropped."""
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def _digest(*parts: object, size: int = 16) -> bytes:
    """Stable digest of the parts (process-independent, unlike ``hash()``)."""
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=size).digest()


def stable_uuid(*parts: object) -> str:
    """A version-4-shaped UUID that is a pure function of the parts."""
    h = _digest(*parts).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def _uuid_from_bits(bits: int) -> str:
    """A version-4 UUID string from 128 random bits."""
    h = f"{bits & _UUID_CLEAR | _UUID_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _request_id(raw: bytes) -> str:
    """``req_`` + 24 alphanumerics, the shape of Anthropic request ids."""
    return "req_011C" + base64.b64encode(raw, b"xZ").decode()[:20]


@dataclass(frozen=True)
class Workspace:
    """A Log Analytics workspace; ``customer_id`` is what the Logs query API addresses."""

    subscription_id: str
    resource_group: str
    name: str
    location: str
    customer_id: str

    @property
    def arm_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.OperationalInsights/workspaces/{self.name}"
        )


@dataclass(frozen=True)
class Resource:
    """A Foundry (``Microsoft.CognitiveServices/accounts``, kind AIServices) resource."""

    subscription_id: str
    resource_group: str
    name: str
    location: str
    workspace: Workspace

    @property
    def arm_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.CognitiveServices/accounts/{self.name}"
        )

    @property
    def endpoint(self) -> str:
        return f"https://{self.name}.services.ai.azure.com/"


@dataclass(frozen=True)
class Deployment:
    """A Claude model deployment on a resource (Global Standard, pay-as-you-go)."""

    resource: Resource
    name: str
    model_name: str
    model_version: str
    sku_name: str
    capacity: int
    created_at: datetime
    deleted_at: datetime | None

    def active_at(self, t: datetime) -> bool:
        return self.created_at <= t and (self.deleted_at is None or t < self.deleted_at)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One data-plane call as Azure saw it (what metrics count, logs list and billing prices)."""

    time: datetime
    deployment: Deployment
    status: int
    duration_ms: int
    ttft_ms: int | None
    stream: bool
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    correlation_id: str
    request_id: str
    caller_ip: str
    operation_name: str
    api_name: str
    request_length: int
    response_length: int


@dataclass(frozen=True)
class WorldEvent:
    """A scripted episode in the traffic: ``kind`` is ``"incident"`` or ``"throttle_burst"``."""

    kind: str
    deployment: Deployment
    start: datetime
    end: datetime

    def covers(self, t: datetime) -> bool:
        return self.start <= t < self.end


def _daily_table(utc_offset_h: int) -> list[float]:
    """Per-UTC-minute traffic multiplier peaking in local business hours, mean 1 over a day."""
    raw = []
    for m in range(1440):
        local_h = (m / 60.0 + utc_offset_h) % 24
        raw.append(0.25 + 1.4 * math.exp(-(((local_h - 13.5) / 3.2) ** 2)))
    mean = sum(raw) / len(raw)
    return [v / mean for v in raw]


# Monday..Sunday; mean 1 over a week.
_WEEKLY = [1.2, 1.22, 1.2, 1.18, 1.1, 0.6, 0.5]
_EMPTY_HOUR: tuple[tuple[RequestRecord, ...], ...] = ((),) * 60


@dataclass
class _DepInfo:
    """Precomputed per-deployment generation parameters (kept off the frozen Deployment)."""

    deployment: Deployment
    per_minute: float
    daily: list[float]
    utc_offset_h: int
    ips: list[str]
    speed: tuple[float, float]
    events: list[WorldEvent] = field(default_factory=list)
    event_minutes: list[tuple[int, int, WorldEvent]] = field(default_factory=list)
    first_min: int = 0
    end_min: int = 0
    prefix: Any = None


def _poisson(u: float, lam: float) -> int:
    """Inverse-CDF Poisson sample for a uniform ``u`` (normal approximation for large rates)."""
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, round(lam + math.sqrt(lam) * _NORMAL.inv_cdf(min(max(u, 1e-12), 1 - 1e-12))))
    p = math.exp(-lam)
    s = p
    n = 0
    while u > s and n < 1000:
        n += 1
        p *= lam / n
        s += p
    return n


class World:
    """The synthetic Azure estate plus its traffic; deterministic for a seed and a clock."""

    def __init__(
        self,
        seed: int = 42,
        *,
        days: int = 30,
        resources: int = 4,
        deployments_per_resource: int = 5,
        requests_per_day: int = 1000,
        clock: Callable[[], datetime] | datetime | None = None,
        cache_hours: int = 16384,
    ) -> None:
        if resources < 1 or deployments_per_resource < 1 or days < 1:
            raise ValueError("resources, deployments_per_resource and days must be >= 1")
        self.seed = seed
        self.days = days
        self.requests_per_day = requests_per_day
        if isinstance(clock, datetime):
            fixed = clock.astimezone(UTC)
            self._clock: Callable[[], datetime] = lambda: fixed
        else:
            self._clock = clock or (lambda: datetime.now(UTC))
        # Scripted episodes are anchored on the window at construction so they do not move while
        # a long-running emulator's clock advances.
        self.origin = floor_minute(self.now()) - timedelta(days=days)
        self.subscriptions = [stable_uuid(seed, "subscription", i) for i in range(2)]
        self.workspaces = [
            Workspace(
                subscription_id=self.subscriptions[0],
                resource_group="rg-monitoring",
                name=f"law-foundry-{region}",
                location=region,
                customer_id=stable_uuid(seed, "workspace", region),
            )
            for region, _short, _off in _REGIONS
        ]
        self.resources = [self._make_resource(i) for i in range(resources)]
        self.api_keys: dict[str, str] = {
            r.name: _digest(seed, "key", r.name).hex() for r in self.resources
        }
        self._infos: list[_DepInfo] = []
        self.deployments: list[Deployment] = []
        self._build_deployments(deployments_per_resource)
        self.events: list[WorldEvent] = []
        self._script_events()
        self._finalize_infos()
        self._index = {
            (d.resource.name.lower(), d.name.lower()): i for i, d in enumerate(self.deployments)
        }
        self._live: dict[tuple[int, int], list[RequestRecord]] = {}
        self._live_lock = threading.Lock()
        self._live_listeners: list[Callable[[Deployment, datetime], None]] = []
        self._generate = lru_cache(maxsize=cache_hours)(self._generate_hour)

    # ----------------------------------------------------------------------------- estate
    def _make_resource(self, i: int) -> Resource:
        if i < len(_FIXED_RESOURCES):
            name, sub_idx, rg = _FIXED_RESOURCES[i]
            region_idx = i % 2
        else:
            region_idx = i % 2
            name = f"fw-foundry-{i + 1:02d}-{_REGIONS[region_idx][1]}"
            sub_idx = (i // 2) % 2
            rg = f"rg-foundry-{i // 10:02d}"
        region = _REGIONS[region_idx][0]
        return Resource(
            subscription_id=self.subscriptions[sub_idx],
            resource_group=rg,
            name=name,
            location=region,
            workspace=self.workspaces[region_idx],
        )

    def _build_deployments(self, per_resource: int) -> None:
        for ri, res in enumerate(self.resources):
            custom = _CUSTOM if ri % 2 == 0 else list(reversed(_CUSTOM))
            plan = _STANDARD + custom
            models = [m for _n, m in _STANDARD]
            while len(plan) < per_resource:
                k = len(plan)
                model = models[k % len(models)]
                plan.append((f"{model.removeprefix('claude-')}-team-{k:02d}", model))
            region_idx = [r[0] for r in _REGIONS].index(res.location)
            offset = _REGIONS[region_idx][2]
            daily = _daily_table(offset)
            for name, model in plan[:per_resource]:
                h = int.from_bytes(_digest(self.seed, "dep", res.name, name, size=8), "big")
                created = self.origin - timedelta(days=30 + h % 170, minutes=h % 1440)
                dep = Deployment(
                    resource=res,
                    name=name,
                    model_name=model,
                    model_version=_MODEL_VERSIONS[model],
                    sku_name="GlobalStandard",
                    capacity=[100, 200, 250, 500, 1000][h % 5],
                    created_at=created,
                    deleted_at=None,
                )
                weight = _WEIGHTS.get(name, 1.0)
                ips = [f"{_IP_PREFIXES[(h >> (4 * k)) % len(_IP_PREFIXES)]}.***" for k in range(4)]
                self.deployments.append(dep)
                self._infos.append(
                    _DepInfo(
                        deployment=dep,
                        per_minute=self.requests_per_day * weight / 1440.0,
                        daily=daily,
                        utc_offset_h=offset,
                        ips=ips,
                        speed=_SPEED[model],
                    )
                )

    def _replace_deployment(self, idx: int, **changes: object) -> Deployment:
        old = self.deployments[idx]
        fields = {f: getattr(old, f) for f in Deployment.__dataclass_fields__}
        fields.update(changes)
        new = Deployment(**fields)  # type: ignore[arg-type]
        self.deployments[idx] = new
        self._infos[idx].deployment = new
        return new

    def _find(self, resource_idx: int, *names: str) -> int | None:
        if resource_idx >= len(self.resources):
            return None
        res = self.resources[resource_idx]
        for name in names:
            for i, d in enumerate(self.deployments):
                if d.resource is res and d.name == name:
                    return i
        return None

    def _script_events(self) -> None:
        """Place the incident, throttle bursts, the deletion and the late creation.

        Offsets are fixed fractions of the window so every world of the same size shows the same
        story: deletion at ~55 % of the window, creation at ~40 %, an incident at ~70 % (14:10
        UTC for one hour), throttle bursts at ~25 %, ~60 % and ~85 %.
        """
        day0 = self.origin.replace(hour=0, minute=0)
        last_r = len(self.resources) - 1

        deleted_idx = self._find(min(3, last_r), "claude-opus-4-1")
        if deleted_idx is not None and (last_r > 0 or deleted_idx != 0):
            self._replace_deployment(
                deleted_idx,
                deleted_at=self.origin + timedelta(days=self.days * 0.55, minutes=17),
            )
        created_idx = self._find(min(2, last_r), "support-bot-sonnet")
        if created_idx is not None:
            self._replace_deployment(
                created_idx,
                created_at=floor_minute(self.origin + timedelta(days=self.days * 0.4, minutes=3)),
            )
        self.deleted_deployment = self.deployments[deleted_idx] if deleted_idx is not None else None
        self.created_deployment = self.deployments[created_idx] if created_idx is not None else None

        incident_idx = self._find(0, "claude-sonnet-4-5")
        if incident_idx is not None:
            start = day0 + timedelta(days=int(self.days * 0.7), hours=14, minutes=10)
            ev = WorldEvent("incident", self.deployments[incident_idx], start, start + 60 * _MINUTE)
            self.events.append(ev)
            self._infos[incident_idx].events.append(ev)

        throttle_idx = self._find(min(1, last_r), "batch-haiku", "claude-haiku-4-5")
        if throttle_idx is not None:
            for frac, hour, length in ((0.25, 15, 12), (0.6, 10, 18), (0.85, 16, 15)):
                start = day0 + timedelta(days=int(self.days * frac), hours=hour, minutes=5)
                ev = WorldEvent(
                    "throttle_burst",
                    self.deployments[throttle_idx],
                    start,
                    start + length * _MINUTE,
                )
                self.events.append(ev)
                self._infos[throttle_idx].events.append(ev)

    # ----------------------------------------------------------------------------- queries
    def now(self) -> datetime:
        """Current time (UTC, aware) from the clock; tests pin it for reproducible windows."""
        return self._clock().astimezone(UTC)

    @property
    def start(self) -> datetime:
        """Beginning of the synthetic history window: ``now - days``, floored to the minute."""
        return floor_minute(self.now() - timedelta(days=self.days))

    @property
    def incident(self) -> WorldEvent | None:
        return next((e for e in self.events if e.kind == "incident"), None)

    @property
    def throttle_bursts(self) -> list[WorldEvent]:
        return [e for e in self.events if e.kind == "throttle_burst"]

    def resource(self, name_or_arm_id: str) -> Resource | None:
        """Look up a resource by name or ARM id, case-insensitively (Azure ids are)."""
        key = name_or_arm_id.rstrip("/").lower()
        for r in self.resources:
            if key in (r.name.lower(), r.arm_id.lower()):
                return r
        return None

    def workspace(self, customer_id_or_arm_id: str) -> Workspace | None:
        key = customer_id_or_arm_id.rstrip("/").lower()
        for w in self.workspaces:
            if key in (w.customer_id.lower(), w.arm_id.lower()):
                return w
        return None

    def deployment(self, resource: Resource | str, name: str) -> Deployment | None:
        """The deployment (active or not) called ``name`` on ``resource``."""
        rname = resource.name if isinstance(resource, Resource) else resource
        idx = self._index.get((rname.lower(), name.lower()))
        return None if idx is None else self.deployments[idx]

    def deployments_of(self, resource: Resource) -> list[Deployment]:
        return [d for d in self.deployments if d.resource == resource]

    def active_deployments(self, at: datetime) -> list[Deployment]:
        return [d for d in self.deployments if d.active_at(at)]

    @staticmethod
    def price(model_name: str) -> dict[str, float]:
        """List price in USD per million tokens for a model (or a deployment's model name)."""
        return dict(PRICES[model_name])

    def requests_in_minute(self, deployment: Deployment, minute: datetime) -> list[RequestRecord]:
        """All calls to ``deployment`` that arrived in ``minute`` (synthetic + live), by time.

        Synthetic calls later than ``now()`` are not returned: the current minute fills up as the
        clock advances, the future is empty.
        """
        epoch_min = _epoch_minute(minute)
        return self._minute(self._dep_index(deployment), epoch_min, self.now())

    def requests(
        self,
        start: datetime,
        end: datetime,
        *,
        resources: Iterable[Resource] | None = None,
    ) -> Iterator[RequestRecord]:
        """Calls that arrived in ``[start, end)``, minute by minute, ordered by time."""
        wanted = None if resources is None else {r.arm_id.lower() for r in resources}
        idxs = [
            i
            for i, d in enumerate(self.deployments)
            if wanted is None or d.resource.arm_id.lower() in wanted
        ]
        start = start.astimezone(UTC)
        end = end.astimezone(UTC)
        now = self.now()
        first = _epoch_minute(start)
        last = _epoch_minute(end - timedelta(microseconds=1))
        infos = self._infos
        for epoch_min in range(first, last + 1):
            batch: list[RequestRecord] = []
            for i in idxs:
                info = infos[i]
                if info.first_min <= epoch_min < info.end_min:
                    batch.extend(self._minute(i, epoch_min, now))
            if len(batch) > 1:
                batch.sort(key=_time_of)
            if epoch_min in (first, last):
                batch = [r for r in batch if start <= r.time < end]
            yield from batch

    def record_live(self, rec: RequestRecord) -> None:
        """Add a served call to its minute, so metrics and logs include it.

        A call may land in a minute some cache already aggregated (Azure reports late data
        the same way), so every :meth:`on_live` listener hears of the minute afterwards.
        """
        idx = self._dep_index(rec.deployment)
        with self._live_lock:
            self._live.setdefault((idx, _epoch_minute(rec.time)), []).append(rec)
            listeners = list(self._live_listeners)
        minute = floor_minute(rec.time)
        for listener in listeners:
            listener(rec.deployment, minute)

    def on_live(self, listener: Callable[[Deployment, datetime], None]) -> None:
        """Call ``listener(deployment, minute)`` after each :meth:`record_live`.

        Why: the emulator caches aggregates of settled minutes, hours and days; without this a
        late call would be missing from every answer built from a cache filled before it.
        """
        with self._live_lock:
            self._live_listeners.append(listener)

    def live_records(self) -> list[RequestRecord]:
        """Every served call recorded so far."""
        with self._live_lock:
            return [r for recs in self._live.values() for r in recs]

    def _dep_index(self, deployment: Deployment) -> int:
        idx = self._index.get((deployment.resource.name.lower(), deployment.name.lower()))
        if idx is None:
            raise KeyError(f"unknown deployment {deployment.resource.name}/{deployment.name}")
        return idx

    def _minute(self, idx: int, epoch_min: int, now: datetime) -> list[RequestRecord]:
        recs = self._generate(idx, epoch_min // 60)[epoch_min % 60]
        if recs and recs[-1].time > now:
            recs = tuple(r for r in recs if r.time <= now)
        live = self._live.get((idx, epoch_min)) if self._live else None
        if live:
            with self._live_lock:
                merged = [*recs, *live]
            merged.sort(key=_time_of)
            return merged
        return list(recs)

    # ----------------------------------------------------------------------------- traffic
    def _finalize_infos(self) -> None:
        """Integer minute bounds and hash prefixes, so the per-minute hot path avoids datetimes."""
        for info in self._infos:
            dep = info.deployment
            info.first_min = _epoch_minute(dep.created_at)
            info.end_min = (
                _epoch_minute(dep.deleted_at - timedelta(microseconds=1)) + 1
                if dep.deleted_at is not None
                else 1 << 62
            )
            info.prefix = hashlib.blake2b(
                f"{self.seed}|{dep.resource.name}|{dep.name}|".encode(), digest_size=16
            )
            info.event_minutes = [
                (_epoch_minute(e.start), _epoch_minute(e.end), e) for e in info.events
            ]

    def _generate_hour(self, idx: int, epoch_hour: int) -> tuple[tuple[RequestRecord, ...], ...]:
        """The 60 minutes of synthetic calls of one deployment-hour.

        One ``random.Random`` per (seed, resource, deployment, hour) rather than per minute: seeding
        a Mersenne Twister costs ~4.5 us, which per minute dominated generating 30 days. Every
        minute is still a pure function of (seed, deployment, minute).
        """
        info = self._infos[idx]
        m0 = epoch_hour * 60
        if m0 + 60 <= info.first_min or m0 >= info.end_min:
            return _EMPTY_HOUR
        # Cyclic GC passes over the (large, acyclic) record cache cost ~25 % of generation time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._fill_hour(info, m0, epoch_hour)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _fill_hour(
        self, info: _DepInfo, m0: int, epoch_hour: int
    ) -> tuple[tuple[RequestRecord, ...], ...]:
        h = info.prefix.copy()
        h.update(b"%d" % epoch_hour)
        rng = random.Random(int.from_bytes(h.digest(), "big"))
        rand = rng.random
        one = self._one
        dep = info.deployment
        daily = info.daily
        per_minute = info.per_minute
        offset = info.utc_offset_h * 60
        hour: list[tuple[RequestRecord, ...]] = []
        for epoch_min in range(m0, m0 + 60):
            u = rand()  # drawn even for inactive minutes so the stream stays aligned
            if not info.first_min <= epoch_min < info.end_min:
                hour.append(())
                continue
            event = None
            for s, e, ev in info.event_minutes:
                if s <= epoch_min < e:
                    event = ev
            lam = (
                per_minute
                * daily[epoch_min % 1440]
                * _WEEKLY[((epoch_min + offset) // 1440 + 3) % 7]
            )
            if event is not None and event.kind == "throttle_burst":
                lam *= 2.5  # clients hammer and retry while throttled
            n = _poisson(u, lam)
            if n == 0:
                hour.append(())
                continue
            minute = _EPOCH + timedelta(minutes=epoch_min)
            recs = [one(rng, info, minute, event) for _ in range(n)]
            if epoch_min in (info.first_min, info.end_min - 1):
                recs = [r for r in recs if dep.active_at(r.time)]
            recs.sort(key=_time_of)
            hour.append(tuple(recs))
        return tuple(hour)

    @staticmethod
    def _one(
        rng: random.Random, info: _DepInfo, minute: datetime, event: WorldEvent | None
    ) -> RequestRecord:
        r = rng.random
        dep = info.deployment
        t = minute + timedelta(0, 0, 0, int(r() * 60000))
        stream = r() < 0.4
        x = r()
        incident = event is not None and event.kind == "incident"
        if event is not None and event.kind == "throttle_burst" and x < 0.75:
            status = 429
        elif incident and x < 0.35:
            status = 500 if r() < 0.7 else 503
        elif x < 0.9925:
            status = 200
        else:  # rare background errors, 0.75 % in all
            y = r()
            status = 401 if y < 0.07 else 400 if y < 0.47 else 500 if y < 0.87 else 529
        inp = out = c_read = c5 = c1 = 0
        ttft: int | None = None
        if status == 200 or status == 500 or status == 503:
            inp = int(_exp(7.0 + 1.1 * (r() + r() + r() - 1.5)))
            inp = 8 if inp < 8 else 180_000 if inp > 180_000 else inp
            c = r()
            if c < 0.30:
                c_read = int(inp * (1 + 6 * r()))
            elif c < 0.40:
                c5 = int(inp * (0.5 + 3 * r()))
            elif c < 0.43:
                c1 = int(inp * (0.5 + 3 * r()))
        if status == 200:
            ttft_base, per_token = info.speed
            out = int(_exp(5.6 + 0.9 * (r() + r() + r() - 1.5)))
            out = 1 if out < 1 else 8192 if out > 8192 else out
            first = ttft_base * _exp(0.5 * (r() - 0.5)) + inp * 0.025
            gen = out * per_token * (0.8 + 0.4 * r())
            if incident:  # overloaded backend: slow to start and slow to generate
                first *= 4 + 2 * r()
                gen *= 3
            duration = int(first + gen)
            if stream:
                ttft = int(first)
            resp_len = out * 6 + 900 if stream else out * 4 + 350
        elif status == 429:
            duration = 15 + int(r() * 65)
            resp_len = 220
        elif status == 401:
            duration = 3 + int(r() * 12)
            resp_len = 230
        elif status == 400:
            duration = 20 + int(r() * 40)
            resp_len = 160
        else:
            duration = int(500 + r() * (25000 if incident else 5000))
            resp_len = 120
        ips = info.ips
        rec = _new_record(RequestRecord)
        _set_time(rec, t)
        _set_deployment(rec, dep)
        _set_status(rec, status)
        _set_duration(rec, duration)
        _set_ttft(rec, ttft)
        _set_stream(rec, stream)
        _set_input(rec, inp)
        _set_output(rec, out)
        _set_cache_read(rec, c_read)
        _set_cache_5m(rec, c5)
        _set_cache_1h(rec, c1)
        _set_correlation(rec, _uuid_from_bits(rng.getrandbits(128)))
        _set_request_id(rec, _request_id(rng.randbytes(15)))
        _set_caller_ip(rec, ips[int(r() * len(ips))])
        _set_operation(rec, OPERATION_NAME)
        _set_api(rec, API_NAME)
        _set_request_length(rec, (inp + c_read + c5 + c1) * 4 + 180)
        _set_response_length(rec, resp_len)
        return rec


# Building records through the slot descriptors skips the frozen-dataclass __init__, which on
# Python 3.11 costs ~3 us per record (object.__setattr__ per field) against ~1 us here; the
# synthetic history is millions of records. Same object, same immutability afterwards.
_new_record = object.__new__
(
    _set_time,
    _set_deployment,
    _set_status,
    _set_duration,
    _set_ttft,
    _set_stream,
    _set_input,
    _set_output,
    _set_cache_read,
    _set_cache_5m,
    _set_cache_1h,
    _set_correlation,
    _set_request_id,
    _set_caller_ip,
    _set_operation,
    _set_api,
    _set_request_length,
    _set_response_length,
) = (RequestRecord.__dict__[f.name].__set__ for f in fields(RequestRecord))


def _time_of(rec: RequestRecord) -> datetime:
    return rec.time


def _epoch_minute(t: datetime) -> int:
    """Minutes since the Unix epoch of an aware datetime (floored)."""
    return int((t - _EPOCH).total_seconds() // 60)
