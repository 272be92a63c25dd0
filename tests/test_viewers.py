"""Viewer credentials: the live view, /api/cameras and the pictures answer 401 without them and
work with them; the login cookie; the Host allowlist; the rate limit; the closed view without
accounts; the configuration and `adaptcast hash-password`; and the daemon's wiring (WHIP and
health stay open, /metrics on its own listener, the refusals counted in /metrics)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import yaml

import adaptcast.receiver.viewers
from adaptcast.demo import free_port
from adaptcast.receiver.daemon import run_receiver
from adaptcast.receiver.live import LiveView
from adaptcast.receiver.stats import VIEWER_REFUSALS
from adaptcast.receiver.viewers import COOKIE, ViewerGate, host_name
from adaptcast.shared.config import load_receiver_config
from adaptcast.shared.errors import ConfigError
from adaptcast.shared.passwords import MAX_FAILURES, MIN_LOG2_N, hash_password, parse_password_hash, verify_password
from tests.conftest import REPO
from tests.test_live_view import AUTH, CAMERA, PASSWORD, VIEWER, clip_frames, password_hash, serving, viewer_gate

VIEWER_ROUTES = ("/", "/static/live.js", "/api/cameras", f"/live/{CAMERA}.jpg", f"/live/{CAMERA}.mjpg", "/nowhere")
"""Every route of the live view, and a path that matches none (also behind the gate)."""


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(name, password)}


@asynccontextmanager
async def live_view(gate: ViewerGate) -> AsyncIterator[str]:
    """A live view with one camera and a frame, behind `gate`; yields the base URL."""
    view = LiveView()
    view.add_camera(CAMERA)
    view.publish(CAMERA, clip_frames()[0])
    async with serving(view, gate) as (_, base):
        yield base


def test_password_hashes() -> None:
    text = hash_password("s3cret-enough", log2_n=MIN_LOG2_N)
    assert text.startswith(f"$scrypt$ln={MIN_LOG2_N},r=8,p=1$") and "s3cret" not in text
    parsed = parse_password_hash(text)
    assert verify_password("s3cret-enough", parsed) and not verify_password("s3cret-enougH", parsed)
    assert hash_password("s3cret-enough", log2_n=MIN_LOG2_N) != text, "the salt is not random"
    salt_and_key = text.split("$", 3)[3]
    for bad, complaint in [
        ("s3cret-enough", "expected a hash"),
        ("$scrypt$ln=14,r=8,p=1$!!!$abc", "expected a hash"),
        (f"$scrypt$ln=10,r=8,p=1${salt_and_key}", "out of range"),  # too cheap to guess against
        (f"$scrypt$ln=20,r=32,p=1${salt_and_key}", "MiB"),  # 4 GiB a check
        ("$scrypt$ln=15,r=8,p=1$c2FsdA$a2V5", "at least 16 bytes"),
    ]:
        with pytest.raises(ValueError, match=complaint):
            parse_password_hash(bad)


def test_viewer_configuration(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TOKEN_GATE", "right-token-0123456789")
    path = tmp_path / "receiver.yaml"

    def load(**settings: object) -> object:
        path.write_text(yaml.safe_dump({"cameras": [{"name": "gate", "token_env": "TOKEN_GATE"}], **settings}))
        return load_receiver_config(path)

    config = load(viewers=[{"name": VIEWER, "password_hash": password_hash()}], allowed_hosts=["Station.Example."],
                  metrics={"port": 0})
    assert config.viewers[0].name == VIEWER and config.allowed_hosts == ("station.example",)
    assert config.metrics.host == "127.0.0.1" and config.viewer_session_hours == 12
    assert password_hash() not in repr(config)
    assert load().viewers == () and load().metrics is None
    with pytest.raises(ConfigError, match=r"viewers\[0\]\.password_hash: expected a hash"):
        load(viewers=[{"name": VIEWER, "password_hash": PASSWORD}])
    with pytest.raises(ConfigError, match=r"viewers\[1\]\.name: viewer name 'alice' is already used by viewers\[0\]"):
        load(viewers=[{"name": VIEWER, "password_hash": password_hash()}] * 2)
    with pytest.raises(ConfigError, match=r"allowed_hosts\[0\]"):
        load(allowed_hosts=["evil.example/path"])
    with pytest.raises(ConfigError, match=r"metrics\.port: the metrics listener needs another port"):
        load(listen={"port": 8080}, metrics={"port": 8080})


def test_hash_password_command() -> None:
    """The password comes from standard input (never argv), and the output is a hash the
    configuration takes."""
    def run(password: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "adaptcast", "hash-password"], input=password + "\n",
                              capture_output=True, text=True, cwd=REPO, timeout=60)

    done = run("correct horse battery staple")
    assert done.returncode == 0, done.stderr
    assert verify_password("correct horse battery staple", parse_password_hash(done.stdout.strip()))
    short = run("short")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr


def test_host_names() -> None:
    assert host_name("127.0.0.1:8080") == "127.0.0.1"
    assert host_name("[::1]:8080") == "::1"
    assert host_name("Station.Example.:443") == "station.example"
    assert host_name("localhost") == "localhost"


def test_viewer_routes_need_credentials() -> None:
    asyncio.run(_viewer_routes_need_credentials())


async def _viewer_routes_need_credentials() -> None:
    gate = viewer_gate()
    async with live_view(gate) as base, aiohttp.ClientSession() as http:
        for path in VIEWER_ROUTES:
            async with http.get(base + path) as response:
                assert response.status == 401, path
                assert response.headers["WWW-Authenticate"] == 'Basic realm="adaptcast"', path
            async with http.get(base + path, headers=basic(VIEWER, "wrong password")) as response:
                assert response.status == 401, path
        async with http.get(base + "/api/cameras", headers=basic("mallory", PASSWORD)) as response:
            assert response.status == 401
        # a browser opening the page goes to the form; its script's requests get no Basic
        # challenge (the browser would pop up its own dialog over the page)
        async with http.get(base + "/", headers={"Accept": "text/html"}, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/login"
        async with http.get(base + "/api/cameras", headers={"Sec-Fetch-Mode": "cors"}) as response:
            assert response.status == 401 and "WWW-Authenticate" not in response.headers
        async with http.get(base + "/login") as response:
            assert response.status == 200 and 'action="login"' in await response.text()
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        async with http.get(base + "/static/login.css") as response:
            assert response.status == 200

        for path in VIEWER_ROUTES[:-2]:
            async with http.get(base + path, headers=AUTH) as response:
                assert response.status == 200, path
                if path.endswith(".jpg"):
                    assert (await response.read())[:2] == b"\xff\xd8"
        async with http.get(base + "/nowhere", headers=AUTH) as response:
            assert response.status == 404
    assert gate.refused["unauthorized"] >= 2 * len(VIEWER_ROUTES) + 2
    assert gate.refused["login_failed"] == len(VIEWER_ROUTES) + 1


def test_login_cookie_and_logout() -> None:
    asyncio.run(_login_cookie_and_logout())


async def _login_cookie_and_logout() -> None:
    async with live_view(viewer_gate(session_seconds=2.0)) as base:
        # unsafe: aiohttp keeps no cookies of an IP address otherwise (browsers do)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            form = {"name": VIEWER, "password": "wrong password"}
            async with http.post(base + "/login", data=form, allow_redirects=False) as response:
                assert response.status == 403 and "Wrong name or password" in await response.text()
                assert COOKIE not in response.cookies
            form["password"] = PASSWORD
            async with http.post(base + "/login", data=form, allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/"
                cookie = response.headers["Set-Cookie"]
            assert re.match(rf"{COOKIE}=[\w-]{{43}};", cookie), cookie
            for attribute in ("HttpOnly", "Path=/", "SameSite=Strict", "Max-Age=2"):
                assert attribute in cookie, cookie
            assert "Secure" not in cookie  # plain HTTP here: a Secure cookie would never come back
            async with http.get(base + "/api/cameras") as response:
                assert response.status == 200
            async with http.post(base + "/logout", allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/login"
        async with aiohttp.ClientSession() as http:
            # the old cookie, sent again by hand after the logout, is worth nothing
            token = cookie.split(";")[0].split("=", 1)[1]
            async with http.get(base + "/api/cameras", cookies={COOKIE: token}) as response:
                assert response.status == 401
            async with http.post(base + "/login", data=form, allow_redirects=False) as response:
                token = response.cookies[COOKIE].value
            async with http.get(base + "/api/cameras", cookies={COOKIE: token}) as response:
                assert response.status == 200
            await asyncio.sleep(2.5)
            async with http.get(base + "/api/cameras", cookies={COOKIE: token}) as response:
                assert response.status == 401, "the session outlived its expiry"
            async with http.get(base + "/api/cameras", cookies={COOKIE: "made-up"}) as response:
                assert response.status == 401


def test_host_allowlist() -> None:
    asyncio.run(_host_allowlist())


async def _host_allowlist() -> None:
    gate = viewer_gate(allowed_hosts=("station.example",))
    async with live_view(gate) as base, aiohttp.ClientSession(headers=AUTH) as http:
        port = base.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "STATION.example", "192.0.2.7"):
            async with http.get(base + "/api/cameras", headers={"Host": host}) as response:
                assert response.status == 200, host
        # a page that rebound its own name to this address sends that name: refused, credentials or not
        for host in (f"attacker.example:{port}", "station.example.attacker.example", "", "localhost.attacker"):
            for path in ("/api/cameras", "/login"):
                async with http.get(base + path, headers={"Host": host}) as response:
                    assert response.status == 421, (host, path)
    assert gate.refused["bad_host"] == 8


def test_repeated_failures_are_refused() -> None:
    asyncio.run(_repeated_failures_are_refused())


async def _repeated_failures_are_refused() -> None:
    gate = viewer_gate()
    async with live_view(gate) as base, aiohttp.ClientSession() as http:
        for _ in range(MAX_FAILURES):
            async with http.get(base + "/api/cameras", headers=basic(VIEWER, "guess")) as response:
                assert response.status == 401
        # now even the right password is not checked from this address, form or Basic
        async with http.get(base + "/api/cameras", headers=basic(VIEWER, PASSWORD)) as response:
            assert response.status == 429 and int(response.headers["Retry-After"]) > 0
        async with http.post(base + "/login", data={"name": VIEWER, "password": PASSWORD}) as response:
            assert response.status == 429 and "Too many failed logins" in await response.text()
    assert gate.refused["rate_limited"] == 2 and gate.refused["login_failed"] == MAX_FAILURES


def test_unknown_names_cost_a_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown name is checked against a dummy hash, so timing does not tell which names exist."""
    checked = []
    verify = adaptcast.receiver.viewers.verify_password

    def counting(password: str, password_hash: object) -> bool:
        checked.append(password_hash)
        return verify(password, password_hash)

    monkeypatch.setattr(adaptcast.receiver.viewers, "verify_password", counting)

    async def scenario() -> None:
        async with live_view(viewer_gate()) as base, aiohttp.ClientSession() as http:
            for name in ("mallory", VIEWER):
                async with http.get(base + "/api/cameras", headers=basic(name, "wrong password")) as response:
                    assert response.status == 401

    asyncio.run(scenario())
    assert len(checked) == 2 and checked[0] is not checked[1]


def test_no_accounts_closes_the_live_view(caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(_no_accounts_closes_the_live_view())
    assert "no viewer accounts: the live view is closed" in caplog.text


async def _no_accounts_closes_the_live_view() -> None:
    gate = ViewerGate({}, 3600.0, (), frozenset(), secure_cookie=False)
    async with live_view(gate) as base, aiohttp.ClientSession(headers=AUTH) as http:
        for path in VIEWER_ROUTES:
            async with http.get(base + path) as response:
                assert response.status == 403, path
        async with http.post(base + "/login", data={"name": VIEWER, "password": PASSWORD}) as response:
            assert response.status == 403
    assert gate.refused["no_accounts"] == len(VIEWER_ROUTES) + 1


def test_receiver_daemon(tmp_path, monkeypatch, model_file) -> None:
    """The daemon puts the gate in front of the live view only: WHIP keeps its bearer tokens,
    health stays open (also to any Host), and `metrics:` moves /metrics to its own listener,
    where the refusals are counted."""
    monkeypatch.setenv("TOKEN_GATE", "right-token-0123456789")
    port, metrics_port = free_port(0), free_port(0)
    (tmp_path / "receiver.yaml").write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": port}, "model": str(model_file), "device": "cpu",
        "cameras": [{"name": "gate", "token_env": "TOKEN_GATE"}],
        "viewers": [{"name": VIEWER, "password_hash": password_hash()}],
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
    }))
    config = load_receiver_config(tmp_path / "receiver.yaml")
    base, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"

    async def scenario() -> str:
        stop = asyncio.Event()
        server = asyncio.create_task(run_receiver(config, stop))
        try:
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        async with http.get(base + "/readyz", headers={"Host": "attacker.example"}) as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline and not server.done(), "the receiver did not get ready"
                    await asyncio.sleep(0.2)
                async with http.get(base + "/api/cameras") as response:
                    assert response.status == 401
                async with http.get(base + "/api/cameras", headers=AUTH) as response:
                    assert response.status == 200 and (await response.json())[0]["name"] == "gate"
                async with http.get(base + "/api/cameras", headers={**AUTH, "Host": "attacker.example"}) as response:
                    assert response.status == 421
                whip = {"Content-Type": "application/sdp", "Host": "attacker.example"}
                async with http.post(base + "/whip/gate", data="v=0", headers=whip) as response:
                    assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
                async with http.get(base + "/metrics", headers=AUTH) as response:
                    assert response.status == 404, "/metrics is still on the main listener"
                async with http.get(metrics) as response:
                    assert response.status == 200
                    return await response.text()
        finally:
            stop.set()
            await server

    text = asyncio.run(scenario())
    refused = dict(re.findall(r'adaptcast_receiver_viewer_refused_total\{reason="(\w+)"\} (\S+)', text))
    assert refused == {**dict.fromkeys(VIEWER_REFUSALS, "0.0"), "unauthorized": "1.0", "bad_host": "1.0"}
