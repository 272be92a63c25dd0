"""Who may watch: viewer accounts, the login the browser keeps, and the Host check.

Every route of the receiver's main listener is a viewer route (the live view, its pictures,
/api/cameras, and any route added later) except the ones the daemon names open: WHIP, which
checks the cameras' bearer tokens itself, /healthz, /readyz and /metrics. A viewer route
answers only

- to a Host header that is an IP address, `localhost` or a name in `allowed_hosts`: a page
  that rebinds its own DNS name to this receiver's address sends that name, so its requests
  are refused (421) and it cannot read anything in the viewer's place;
- and to a viewer: a session cookie from POST /login (HttpOnly, SameSite=Strict, Secure under
  TLS) or HTTP Basic with the same accounts, for scripts and scrapers. A browser navigating
  to a page is sent to /login; any other request gets 401.

With no accounts configured the viewer routes answer 403: the live view is closed, not open.
Passwords are checked with scrypt (shared/passwords.py) in a worker thread, at most two at a
time, a dummy hash standing in for unknown names so that timing does not tell which exist;
an address with too many failures in a few minutes is refused (429) before any check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from adaptcast.receiver.stats import ViewerGateStats, ViewerRefusal
from adaptcast.shared.passwords import (
    FAILURE_WINDOW_SECONDS,
    MAX_FAILURES,
    hash_password,
    parse_password_hash,
    verify_password,
)
from adaptcast.shared.resources import resource_path

log = logging.getLogger(__name__)

STATIC_DIR = resource_path("adaptcast.receiver", "static")
COOKIE = "adaptcast_session"
BASIC_CACHE_SECONDS = 60.0
"""A Basic header that verified is trusted this long without a new scrypt: a script polling
every half second costs one check a minute, not two a second."""
MAX_NAME, MAX_PASSWORD = 64, 1024
_CONCURRENT_CHECKS = 2
"""scrypt checks at once (32 MiB each): a flood of logins queues instead of exhausting memory."""
_LOGIN_ROUTES = frozenset({"/login", "/logout", "/static/login.css"})
_FAILED_LOGIN = b'<p class="error" role="alert">Wrong name or password.</p>'
_TOO_MANY = b'<p class="error" role="alert">Too many failed logins from this address: wait a few minutes.</p>'
_HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_name(header: str) -> str:
    """The name (or address) in a Host header, without its port, lower case, without a final dot."""
    if header.startswith("["):
        return header[1:].partition("]")[0].lower()
    name = header.rpartition(":")[0] if header.count(":") == 1 else header
    return name.lower().rstrip(".")


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass
class _Session:
    viewer: str
    expires: float
    """time.monotonic() after which the session is gone."""


class ViewerGate:
    """The accounts, the sessions and the checks in front of the viewer routes (one per receiver)."""

    def __init__(self, accounts: dict[str, str], session_seconds: float, allowed_hosts: tuple[str, ...],
                 open_routes: frozenset[str], secure_cookie: bool) -> None:
        """`accounts`: viewer name -> password hash (checked by the configuration); `open_routes`:
        the route patterns (as registered) that no viewer check applies to."""
        self._accounts = {name: parse_password_hash(text) for name, text in accounts.items()}
        self._dummy = parse_password_hash(hash_password(secrets.token_urlsafe(16)))
        self._session_seconds = session_seconds
        self._allowed_hosts = frozenset({"localhost", *allowed_hosts})
        self._open_routes = open_routes
        self._secure = secure_cookie
        self._sessions: dict[bytes, _Session] = {}
        """By the SHA-256 of the cookie's value, so a lookup's timing says nothing of the value."""
        self._basic: dict[bytes, _Session] = {}
        """Basic headers that verified recently, by their SHA-256."""
        self._failures: dict[str, deque[float]] = {}
        """time.monotonic() of each address's recent failed logins."""
        self._checks = asyncio.Semaphore(_CONCURRENT_CHECKS)
        self._bad_hosts_logged: set[str] = set()
        self.refused: dict[ViewerRefusal, int] = {}
        """Viewer requests refused, by reason: unauthorized, login_failed, rate_limited, bad_host, no_accounts."""
        if not self._accounts:
            log.warning("live view: no viewer accounts: the live view is closed (add `viewers:` to the configuration)")

    def stats(self) -> ViewerGateStats:
        return ViewerGateStats(refused=dict(self.refused))

    def add_routes(self, app: web.Application) -> None:
        """The login page and form, logout, and the check in front of every other route of `app`."""
        app.router.add_get("/login", self._login_page)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/static/login.css", self._login_css)
        app.middlewares.append(self._middleware)

    def _count(self, reason: ViewerRefusal) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        # an unknown path (no resource) is a viewer route too: nobody learns which paths exist
        if route is not None and route.canonical in self._open_routes:
            return await handler(request)
        self._check_host(request)
        if route is not None and route.canonical in _LOGIN_ROUTES:
            return await handler(request)
        if not self._accounts:
            self._count("no_accounts")
            raise web.HTTPForbidden(text="no viewer accounts: the live view is closed\n")
        if self._session_viewer(request) is None and await self._basic_viewer(request) is None:
            self._count("unauthorized")
            raise self._unauthorized(request)
        return await handler(request)

    def _check_host(self, request: web.Request) -> None:
        name = host_name(request.headers.get("Host", ""))
        if name in self._allowed_hosts or is_ip_literal(name):
            return
        self._count("bad_host")
        if name not in self._bad_hosts_logged and len(self._bad_hosts_logged) < 100:
            self._bad_hosts_logged.add(name)
            log.warning("live view: refused a request for host %r from %s (not in allowed_hosts; further ones "
                        "are only counted)", name[:80], request.remote)
        raise web.HTTPMisdirectedRequest(text="this receiver does not answer to that host name\n")

    @staticmethod
    def _unauthorized(request: web.Request) -> web.HTTPException:
        """A browser opening a page goes to the login form; anything else gets 401.

        The Basic challenge is left out for browsers (they send Sec-Fetch-Mode): with it, an
        expired session would pop up the browser's own password dialog over the page, whose
        script sends the viewer to the login form instead.
        """
        if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            return web.HTTPSeeOther("/login")
        headers = {} if "Sec-Fetch-Mode" in request.headers else {"WWW-Authenticate": 'Basic realm="adaptcast"'}
        return web.HTTPUnauthorized(text="viewer credentials are required: log in at /login, or use HTTP Basic\n",
                                    headers=headers)

    def _session_viewer(self, request: web.Request) -> str | None:
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        key = hashlib.sha256(token.encode()).digest()
        session = self._sessions.get(key)
        if session is None or session.expires < time.monotonic():
            self._sessions.pop(key, None)
            return None
        return session.viewer

    async def _basic_viewer(self, request: web.Request) -> str | None:
        """The viewer an `Authorization: Basic` header names, if its password is right."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        key = hashlib.sha256(header.encode()).digest()
        known = self._basic.get(key)
        if known is not None and known.expires >= time.monotonic():
            return known.viewer
        try:
            name, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not await self._verify(request, name, password):
            return None
        now = time.monotonic()
        self._basic = {k: s for k, s in self._basic.items() if s.expires >= now}
        self._basic[key] = _Session(name, now + BASIC_CACHE_SECONDS)
        return name

    async def _verify(self, request: web.Request, name: str, password: str) -> bool:
        """Check a name and password, counting and logging a failure; refuse (429) an address
        that failed too often lately, before any check."""
        address = request.remote or "unknown"
        now = time.monotonic()
        recent = self._failures.get(address)
        while recent and recent[0] < now - FAILURE_WINDOW_SECONDS:
            recent.popleft()
        if recent is not None and len(recent) >= MAX_FAILURES:
            self._count("rate_limited")
            raise web.HTTPTooManyRequests(text="too many failed logins from this address: wait a few minutes\n",
                                          headers={"Retry-After": str(int(FAILURE_WINDOW_SECONDS))})
        account = self._accounts.get(name) if len(name) <= MAX_NAME and len(password) <= MAX_PASSWORD else None
        async with self._checks:
            # an unknown name costs a check too, so that timing does not tell which names exist
            ok = await asyncio.to_thread(verify_password, password[:MAX_PASSWORD], account or self._dummy)
        if ok and account is not None:
            return True
        self._count("login_failed")
        self._failures = {a: f for a, f in self._failures.items() if f and f[-1] >= now - FAILURE_WINDOW_SECONDS}
        self._failures.setdefault(address, deque()).append(now)
        log.warning("live view: failed login as %r from %s", name[:MAX_NAME], address)
        return False

    async def _login_page(self, request: web.Request, message: bytes = b"", status: int = 200) -> web.Response:
        page = (STATIC_DIR / "login.html").read_bytes().replace(b"<!--message-->", message)
        return web.Response(body=page, status=status, content_type="text/html", charset="utf-8",
                            headers=_HTML_HEADERS)

    async def _login_css(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "login.css", headers=_HTML_HEADERS)

    async def _login(self, request: web.Request) -> web.Response:
        """Check the form's name and password; on success start a session and go to the live view."""
        if not self._accounts:
            self._count("no_accounts")
            raise web.HTTPForbidden(text="no viewer accounts: the live view is closed\n")
        form = await request.post()
        name, password = form.get("name"), form.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            raise web.HTTPBadRequest(text="the form needs a name and a password\n")
        try:
            ok = await self._verify(request, name, password)
        except web.HTTPTooManyRequests:
            return await self._login_page(request, _TOO_MANY, status=429)
        if not ok:
            return await self._login_page(request, _FAILED_LOGIN, status=403)
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires >= now}
        self._sessions[hashlib.sha256(token.encode()).digest()] = _Session(name, now + self._session_seconds)
        log.info("live view: viewer %r logged in from %s", name, request.remote)
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, token, max_age=int(self._session_seconds), path="/", httponly=True,
                            samesite="Strict", secure=self._secure)
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        token = request.cookies.get(COOKIE)
        if token:
            self._sessions.pop(hashlib.sha256(token.encode()).digest(), None)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response
