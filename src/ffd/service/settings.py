"""The service's settings (``conf/serve.yaml``'s ``serve:`` group), checked before the model loads."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, fields
from typing import Any

from ffd import rules
from ffd.errors import ConfigError

log = logging.getLogger(__name__)

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")  # what serve.allowed_hosts=null accepts, with serve.host
WILDCARDS = ("0.0.0.0", "::", "")  # hosts that listen on every address, so name none of them


@dataclass(frozen=True)
class Settings:
    """See ``conf/serve.yaml`` for what each setting does."""

    host: str
    port: int
    allowed_hosts: tuple[str, ...] | None
    max_connections: int
    max_batch: int
    max_wait_ms: float
    max_queue: int
    decode_threads: int
    max_files: int
    max_upload_mb: float
    body_timeout_s: float
    timeout_s: float
    face_margin: float
    face_detector: str
    cam_method: str
    token: str | None
    log_dir: str | None
    log_max_mb: float
    access_log: bool

    @classmethod
    def from_config(cls, node: Any) -> Settings:
        """Settings from the ``serve`` node; a ConfigError names the first bad key and its fix."""
        values = dict(node)
        if unknown := set(values) - {f.name for f in fields(cls)}:
            raise ConfigError(f"serve: unknown settings {sorted(unknown)}; see conf/serve.yaml.")
        if (hosts := values.get("allowed_hosts")) is not None and not isinstance(hosts, str):
            values["allowed_hosts"] = list(hosts)  # a ListConfig from the command line
        rules.check_all({f"serve.{k}": v for k, v in values.items() if f"serve.{k}" in rules.RULES})
        if values["allowed_hosts"] is not None:
            values["allowed_hosts"] = tuple(str(h).lower() for h in values["allowed_hosts"])
        if values["token"] is not None:
            values["token"] = str(values["token"])
            if not values["token"].strip():
                raise ConfigError("serve.token is empty: set a secret, or null for no authentication.")
        settings = cls(**values)
        settings._check_together()
        if not settings.token and not settings.loopback:
            log.warning(
                "serve.host=%s takes requests from other machines and serve.token is not set: anyone "
                "who reaches it can use the model (set FFD_SERVE_TOKEN or serve.token).", settings.host
            )  # fmt: skip
        return settings

    def _check_together(self) -> None:
        if self.max_queue < self.max_files:
            raise ConfigError(
                f"serve.max_queue={self.max_queue} is less than serve.max_files={self.max_files}: a full "
                "request could never be taken; raise serve.max_queue or lower serve.max_files."
            )
        if self.allowed_hosts is None and self.host in WILDCARDS:
            raise ConfigError(
                f"serve.host={self.host or '0.0.0.0'} takes requests addressed to any name: list the names "
                "and addresses clients use to reach this machine in serve.allowed_hosts, e.g. "
                "serve.allowed_hosts=[myhost.lan,192.168.1.5] (requests naming another Host get HTTP "
                "400, which stops DNS rebinding), or ['*'] to accept any name."
            )

    @property
    def hosts(self) -> tuple[str, ...]:
        """The Host header names requests may carry (``serve.allowed_hosts``, or this machine's own)."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return (*LOCAL_NAMES, self.host.lower()) if self.host.lower() not in LOCAL_NAMES else LOCAL_NAMES

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def log_max_bytes(self) -> int:
        return int(self.log_max_mb * 2**20)
