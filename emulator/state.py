"""Everything a request handler may read or change, reached as ``request.app.state.emulator``."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from emulator.auth import TokenStore
from emulator.faults import Faults
from emulator.world import World

__all__ = ["EmulatorState"]


@dataclass
class EmulatorState:
    """Shared, mutable emulator state (one per server).

    ``arm_page_size`` and ``cost_page_size`` are small knobs so tests and demos see ``nextLink``
    paging without needing thousands of resources.
    """

    world: World
    faults: Faults = field(default_factory=Faults)
    tokens: TokenStore = field(default_factory=TokenStore)
    identity_header: str = field(default_factory=lambda: secrets.token_hex(16))
    token_lifetime_s: int = 3600
    cost_page_size: int = 1000
    arm_page_size: int = 2
    #: Extra latency the data plane adds before answering (and before the first streamed token).
    dataplane_delay_s: float = 0.0
    #: Anthropic prompt cache of the data plane: cache key -> expiry (epoch seconds).
    prompt_cache: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def api_keys(self) -> dict[str, str]:
        """Data-plane key of each resource (``api-key``/``x-api-key`` header), by resource name."""
        return self.world.api_keys

    def api_key(self, resource_name: str) -> str:
        """The key of one resource (case-insensitive name)."""
        for name, key in self.world.api_keys.items():
            if name.lower() == resource_name.lower():
                return key
        raise KeyError(resource_name)
