"""The monitor's settings: `config.monitor` plus the fields it may not have yet.

`MonitorSettings` in config.py holds host, port and token; the other fields are read
with defaults so the monitor works with an older config module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


@dataclass(frozen=True)
class MonitorConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_upload_mb: float = 512
    preview_every_steps: int | None = None
    preview_max_new_tokens: int = 64
    preview_budget: float = 0.05
    # Heartbeats come every second; ten missed ones mean the daemon is stuck or gone.
    stale_after_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: Any) -> MonitorConfig:
        defaults = cls()
        values = {name: getattr(settings, name, getattr(defaults, name)) for name in cls.__dataclass_fields__}
        return cls(**values)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
