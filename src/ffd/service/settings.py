"""The service's settings (``conf/serve.yaml``'s ``serve:`` group), checked before the model loads."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, fields
from typing import Any

from ffd import rules
from ffd.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """See ``conf/serve.yaml`` for what each setting does."""

    host: str
    port: int
    max_batch: int
    max_wait_ms: float
    max_files: int
    max_upload_mb: float
    timeout_s: float
    face_margin: float
    face_detector: str
    cam_method: str
    token: str | None
    log_dir: str | None
    access_log: bool

    @classmethod
    def from_config(cls, node: Any) -> Settings:
        """Settings from the ``serve`` node; a ConfigError names the first bad key and its fix."""
        values = dict(node)
        if unknown := set(values) - {f.name for f in fields(cls)}:
            raise ConfigError(f"serve: unknown settings {sorted(unknown)}; see conf/serve.yaml.")
        rules.check_all({f"serve.{k}": v for k, v in values.items() if f"serve.{k}" in rules.RULES})
        if values["token"] is not None:
            values["token"] = str(values["token"])
            if not values["token"].strip():
                raise ConfigError("serve.token is empty: set a secret, or null for no authentication.")
        settings = cls(**values)
        if not settings.token and not settings.loopback:
            log.warning(
                "serve.host=%s takes requests from other machines and serve.token is not set: anyone "
                "who reaches it can use the model (set FFD_SERVE_TOKEN or serve.token).", settings.host
            )  # fmt: skip
        return settings

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
