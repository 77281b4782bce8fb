"""The service's settings (``conf/serve.yaml``'s ``serve:`` group), checked before the model loads."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, fields
from typing import Any

from ffd.analysis.gradcam import check_method
from ffd.data.faces import DETECTORS
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
    max_pixels: int
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
        at_least = {"port": 0, "max_batch": 1, "max_files": 1, "max_pixels": 1}
        for key, low in at_least.items():
            if not isinstance(values[key], int) or values[key] < low:
                raise ConfigError(f"serve.{key}={values[key]!r}: use a whole number >= {low}.")
        for key in ("max_wait_ms", "max_upload_mb", "timeout_s", "face_margin"):
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"serve.{key}={value!r}: use a number >= 0.")
        if values["port"] > 65535:
            raise ConfigError(f"serve.port={values['port']}: use 0 (any free port) to 65535.")
        for key in ("max_upload_mb", "timeout_s"):
            if values[key] == 0:
                raise ConfigError(f"serve.{key}=0: use a number > 0.")
        check_method(values["cam_method"], "serve.cam_method")
        if values["face_detector"] not in DETECTORS:
            choices = ", ".join(DETECTORS)
            raise ConfigError(f"serve.face_detector={values['face_detector']!r}: use one of {choices}.")
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
