"""Who may talk to the service from a browser: the Host allow-list and the same-origin rule for POSTs.

- ``AllowedHosts``: Starlette's ``TrustedHostMiddleware`` on ``serve.allowed_hosts``, whose refusal
  (HTTP 400) says which setting to change. A page on another site that rebinds its DNS name to
  127.0.0.1 sends its own name as Host, so it is refused.
- ``SameOrigin`` (when no ``serve.token`` is set; a token is what a cross-site page can't send): a
  POST that carries an ``Origin`` header must come from a page of this service (the Origin names the
  Host the request was sent to), or carry ``X-Requested-With``, a header no cross-site form can set
  and no cross-site script can add without a CORS preflight this service never grants. Clients that
  are not browsers (curl, scripts) send no Origin and pass. The refusal is HTTP 403 with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PAGE_HEADER = "x-requested-with"  # the page sends it; a cross-site form cannot


def host_name(host_header: str | None) -> str:
    """The name of a Host header value (``[::1]:8000`` -> ``::1``), lower case; '' if it has none."""
    try:
        return (urlsplit(f"//{host_header or ''}").hostname or "").lower()
    except ValueError:  # a malformed port or bracket
        return ""


class AllowedHosts(TrustedHostMiddleware):
    """``TrustedHostMiddleware`` (no www-redirect), refusing with a JSON message that gives the fix."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        bracketed = [f"[{h}]" for h in allowed_hosts if ":" in h]  # Starlette compares IPv6 as [::1]
        super().__init__(app, allowed_hosts=[*allowed_hosts, *bracketed], www_redirect=False)
        self.names = list(allowed_hosts)

    def allowed(self, host: str) -> bool:
        return bool(host) and any(
            host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
            for pattern in self.names
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allow_any or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        given = Headers(scope=scope).get("host")
        if not self.allowed(host_name(given)):
            detail = (
                f"the Host header {given!r} is not one this service answers to: use one of "
                f"{', '.join(self.names)}, or add the name clients use to serve.allowed_hosts"
            )
            await JSONResponse({"detail": detail}, 400)(scope, receive, send)
            return
        await super().__call__(scope, receive, send)  # checks again, as Starlette does


class SameOrigin:
    """Refuse cross-site POSTs (HTTP 403) where no token protects the API (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and PAGE_HEADER not in headers and not same_origin(origin, headers):
                detail = (
                    f"a cross-site request (Origin {origin!r}, Host {headers.get('host')!r}) was refused: "
                    "POST from this service's own page, or from a program that sends no Origin header, or "
                    "send the header 'X-Requested-With: ffd' (or set serve.token and send it)"
                )
                await JSONResponse({"detail": detail}, 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def same_origin(origin: str, headers: Headers) -> bool:
    """Whether an Origin header names the host (and port) the request was sent to."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == headers.get("host", "").lower()
