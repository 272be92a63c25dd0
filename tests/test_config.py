"""The daemons' YAML configuration: the examples load, and every bad value names its key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.config import load_receiver_config, load_sender_config
from adaptcast.shared.errors import ConfigError
from adaptcast.shared.frames import FrameSize

EXAMPLES = Path(__file__).resolve().parent.parent / "deploy" / "config"
TOKENS = {"ADAPTCAST_TOKEN_GATE": "gate-secret-4f1c9e", "ADAPTCAST_TOKEN_LAB": "lab-secret-77ab02"}

SENDER: dict[str, Any] = {
    "receiver": {"url": "http://127.0.0.1:8080"},
    "cameras": [
        {"name": "gate", "source": "rtsp://192.0.2.10/stream1", "token_env": "ADAPTCAST_TOKEN_GATE"},
        {"name": "lab", "source": "testpattern", "token_env": "ADAPTCAST_TOKEN_LAB"},
    ],
}
RECEIVER: dict[str, Any] = {
    "cameras": [
        {"name": "gate", "token_env": "ADAPTCAST_TOKEN_GATE"},
        {"name": "lab", "token_env": "ADAPTCAST_TOKEN_LAB"},
    ],
}


@pytest.fixture(autouse=True)
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)


def write(tmp_path: Path, data: object, name: str = "sender.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def changed(base: dict[str, Any], keys: tuple[str | int, ...], value: object) -> dict[str, Any]:
    """A deep copy of `base` with the key at `keys` set to `value` (missing sections are added)."""
    data = copy.deepcopy(base)
    target: Any = data
    for key in keys[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else target[key]
    target[keys[-1]] = value
    return data


def error_of(load: Any, path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path)
    return str(caught.value)


def test_sender_example_loads() -> None:
    config = load_sender_config(EXAMPLES / "sender.example.yaml")
    gate, lab = config.cameras
    assert (gate.name, lab.name) == ("gate", "lab")
    assert gate.source.startswith("rtsp://") and lab.source == "testpattern"
    assert gate.token.get_secret_value() == TOKENS["ADAPTCAST_TOKEN_GATE"]
    assert gate.size == FrameSize(640, 384) and gate.segment_frames == 20
    assert lab.size == FrameSize(320, 240) and lab.mode is AdaptMode.LIVE and lab.fit_steps == 20
    assert config.receiver.whip_url("gate") == "http://127.0.0.1:8080/whip/gate"
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 9101)



def test_the_adaptation_mode_is_the_enum_from_a_file_and_from_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptcast.cli import Registry, build_parser
    from adaptcast.demo import TOKEN_ENV, LoopbackStation, StationSettings

    parser = build_parser(Registry.installed().commands(None))  # every command, the benchmarks' too
    assert parser.parse_args(["encode", "in.mp4", "-o", "out.acs", "--mode", "live"]).mode is AdaptMode.LIVE
    assert parser.parse_args(["encode", "in.mp4", "-o", "out.acs"]).mode is AdaptMode.SEGMENT
    assert parser.parse_args(["bench-stream"]).modes == [AdaptMode.LIVE, AdaptMode.SEGMENT]
    with pytest.raises(SystemExit):
        parser.parse_args(["encode", "in.mp4", "-o", "out.acs", "--mode", "fast"])
    # the demo writes the mode into a sender's YAML file, which reads it back as the enum
    monkeypatch.setenv(TOKEN_ENV, "t" * 24)
    station = LoopbackStation(StationSettings(mode=AdaptMode.SEGMENT, port=0))
    try:
        _, sender_file = station._write_configs(tmp_path)
    finally:
        station.__exit__()  # nothing was started: only its folder goes
    assert load_sender_config(sender_file).cameras[0].mode is AdaptMode.SEGMENT

def test_receiver_example_loads() -> None:
    config = load_receiver_config(EXAMPLES / "receiver.example.yaml")
    assert [camera.name for camera in config.cameras] == ["gate", "lab"]
    assert config.cameras[1].token.get_secret_value() == TOKENS["ADAPTCAST_TOKEN_LAB"]
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8080)
    assert config.archive is not None and config.archive.max_bytes == 10 * 1024**3
    assert (config.archive.max_file_bytes, config.archive.min_free_bytes) == (64 * 1024**2, 1024**3)
    assert config.tls is None


def test_defaults_and_derived_values(tmp_path: Path) -> None:
    config = load_sender_config(write(tmp_path, changed(SENDER, ("receiver", "url"), "https://rx.example/base/")))
    camera = config.cameras[0]
    assert (camera.fps, camera.segment_seconds, camera.segment_frames) == (10.0, 2.0, 20)
    assert camera.loop and camera.adapt and config.device == "auto" and config.model == "ssf-small-vr"
    assert config.receiver.whip_url("lab") == "https://rx.example/base/whip/lab"
    fast = load_sender_config(write(tmp_path, changed(SENDER, ("cameras", 0, "segment_seconds"), 0.2)))
    assert fast.cameras[0].segment_frames == 2
    receiver = load_receiver_config(write(tmp_path, RECEIVER, "receiver.yaml"))
    assert receiver.archive is None and receiver.workers == 1 and receiver.heartbeat_timeout_seconds == 5


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "ca.pem").write_text("", encoding="utf-8")
    data = changed(SENDER, ("cameras", 1, "source"), "clip.mp4")
    data["receiver"] = {"url": "https://rx.example", "ca_file": "ca.pem"}
    path = write(tmp_path, data)
    monkeypatch.chdir("/")
    config = load_sender_config(path)
    assert config.cameras[1].source == str(tmp_path / "clip.mp4")
    assert config.receiver.ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("keys", "value", "expected"),
    [
        (("cameras", 1, "name"), "bad name!", "cameras[1].name: String should match pattern"),
        (("cameras", 1, "name"), "gate", "cameras[1].name: camera name 'gate' is already used by cameras[0]"),
        (("cameras", 1, "fps"), 0, "cameras[1].fps: Input should be greater than 0"),
        (("cameras", 0, "fps"), 61, "cameras[0].fps: Input should be less than or equal to 60"),
        (("cameras", 1, "size"), "33x20", "cameras[1].size: frame size must be even"),
        (("cameras", 1, "size"), "30x20", "cameras[1].size: both sides must be at least 32"),
        (("cameras", 1, "size"), "big", "cameras[1].size: size must look like 320x240"),
        (("cameras", 1, "size"), 320, "cameras[1].size: size must be a string like 320x240"),
        (("cameras", 1, "mode"), "fast", "cameras[1].mode: Input should be 'live' or 'segment'"),
        (("cameras", 1, "fit_steps"), 0, "cameras[1].fit_steps: Input should be greater than or equal to 1"),
        (("cameras", 1, "segment_seconds"), 0.1, "cameras[1].segment_seconds: Input should be greater than"),
        (("cameras", 1, "source"), "missing.mp4", "cameras[1].source: no such video file:"),
        (("cameras", 1, "source"), "http://cam/x", "cameras[1].source: unsupported URL scheme 'http'"),
        (("cameras", 1, "token_env"), "lower", "cameras[1].token_env: String should match pattern"),
        (("cameras", 1, "colour"), "red", "cameras[1].colour: unknown key"),
        (("cameras",), [], "cameras: at least one camera is needed"),
        (("receiver", "url"), "ftp://rx", "receiver.url: expected an http:// or https:// URL"),
        (("receiver", "url"), "https://user:pw@rx", "receiver.url: credentials do not belong in the URL"),
        (("receiver", "ca_file"), "missing.pem", "receiver.ca_file: no such file:"),
        (("receiver", "port"), 80, "receiver.port: unknown key"),
        (("metrics", "port"), 70000, "metrics.port: Input should be less than or equal to 65535"),
        (("device",), "tpu", "device: Input should be 'auto', 'cpu' or 'cuda'"),
        (("model",), "models/missing.safetensors", "model: no such file:"),
        (("verbose",), True, "verbose: unknown key"),
    ],
)
def test_bad_sender_value_names_the_key(tmp_path: Path, keys: tuple[str | int, ...], value: object,
                                        expected: str) -> None:
    path = write(tmp_path, changed(SENDER, keys, value))
    assert f"{path}: {expected}" in error_of(load_sender_config, path)


def test_every_problem_on_its_own_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADAPTCAST_TOKEN_LAB")
    data = changed(SENDER, ("cameras", 0, "fps"), 0)
    data["cameras"][1]["size"] = "33x20"
    del data["receiver"]
    path = write(tmp_path, data)
    lines = error_of(load_sender_config, path).splitlines()
    assert lines == [
        f"{path}: receiver: required key is missing",
        f"{path}: cameras[0].fps: Input should be greater than 0",
        f"{path}: cameras[1].token_env: environment variable 'ADAPTCAST_TOKEN_LAB' is not set or is empty",
        f"{path}: cameras[1].size: frame size must be even (4:2:0 video), got 33x20",
    ]


@pytest.mark.parametrize("value", [None, ""])
def test_missing_token_names_the_key_and_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("ADAPTCAST_TOKEN_LAB")
    else:
        monkeypatch.setenv("ADAPTCAST_TOKEN_LAB", value)
    path = write(tmp_path, SENDER)
    assert (f"{path}: cameras[1].token_env: environment variable 'ADAPTCAST_TOKEN_LAB' is not set or is empty"
            in error_of(load_sender_config, path))


def test_a_token_may_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "gate.token").write_text("file-secret-91d0\n")
    cameras = [{"name": "gate", "token_file": "gate.token"}, {"name": "lab", "token_env": "ADAPTCAST_TOKEN_LAB"}]
    config = load_receiver_config(write(tmp_path, {"cameras": cameras}, "receiver.yaml"))
    assert config.cameras[0].token.get_secret_value() == "file-secret-91d0"  # relative to the file, trimmed
    assert config.cameras[1].token.get_secret_value() == TOKENS["ADAPTCAST_TOKEN_LAB"]


@pytest.mark.parametrize(
    ("camera", "expected"),
    [
        ({"name": "gate"}, "cameras[0]: give exactly one of token_env and token_file"),
        ({"name": "gate", "token_env": "ADAPTCAST_TOKEN_GATE", "token_file": "gate.token"},
         "cameras[0]: give exactly one of token_env and token_file"),
        ({"name": "gate", "token_file": "missing.token"}, "cameras[0].token_file: no such file:"),
        ({"name": "gate", "token_file": "empty.token"}, "cameras[0]: token_file"),
    ],
)
def test_bad_token_sources_name_the_camera(tmp_path: Path, camera: dict[str, str], expected: str) -> None:
    (tmp_path / "gate.token").write_text("x")
    (tmp_path / "empty.token").write_text(" \n")
    path = write(tmp_path, {"cameras": [camera]}, "receiver.yaml")
    assert expected in error_of(load_receiver_config, path)


@pytest.mark.parametrize(
    ("keys", "value", "expected"),
    [
        (("cameras", 1, "name"), "gate", "cameras[1].name: camera name 'gate' is already used by cameras[0]"),
        (("cameras", 0, "source"), "testpattern", "cameras[0].source: unknown key"),
        (("tls",), {"cert_file": "missing.crt", "key_file": "missing.key"}, "tls.cert_file: no such file:"),
        (("tls",), {"cert_file": "missing.crt", "key_file": "missing.key"}, "tls.key_file: no such file:"),
        (("tls",), {"cert_file": "missing.crt"}, "tls.key_file: required key is missing"),
        (("archive",), {"dir": "archive", "max_bytes": 0}, "archive.max_bytes: Input should be greater than 0"),
        (("archive",), {"max_age_hours": 1}, "archive.dir: required key is missing"),
        (("archive",), {"dir": "archive", "max_file_bytes": 1000},
         "archive.max_file_bytes: Input should be greater than or equal to 1048576"),
        (("archive",), {"dir": "archive", "min_free_bytes": -1},
         "archive.min_free_bytes: Input should be greater than or equal to 0"),
        (("listen", "port"), -1, "listen.port: Input should be greater than or equal to 0"),
        (("workers",), 65, "workers: Input should be less than or equal to 64"),
        (("threads_per_worker",), 0, "threads_per_worker: Input should be greater than or equal to 1"),
        (("heartbeat_timeout_seconds",), 0, "heartbeat_timeout_seconds: Input should be greater than 0"),
    ],
)
def test_bad_receiver_value_names_the_key(tmp_path: Path, keys: tuple[str | int, ...], value: object,
                                          expected: str) -> None:
    path = write(tmp_path, changed(RECEIVER, keys, value), "receiver.yaml")
    assert f"{path}: {expected}" in error_of(load_receiver_config, path)


def test_tls_files_that_exist_load(tmp_path: Path) -> None:
    for name in ("rx.crt", "rx.key"):
        (tmp_path / name).write_text("", encoding="utf-8")
    data = {**RECEIVER, "tls": {"cert_file": "rx.crt", "key_file": str(tmp_path / "rx.key")}}
    config = load_receiver_config(write(tmp_path, data, "receiver.yaml"))
    assert config.tls is not None and config.tls.cert_file == tmp_path / "rx.crt"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.1.2.3", "http://localhost:8080",
                                 "http://LOCALHOST", "http://[::1]:8080", "https://rx.example", "https://192.0.2.7"])
def test_plain_http_is_fine_to_this_machine_and_https_anywhere(tmp_path: Path, url: str) -> None:
    assert load_sender_config(write(tmp_path, changed(SENDER, ("receiver", "url"), url))).receiver.url == url


@pytest.mark.parametrize(("url", "host"), [("http://rx.example", "rx.example"), ("http://192.0.2.7:8080", "192.0.2.7"),
                                           ("http://[2001:db8::1]:8080", "2001:db8::1"),
                                           ("http://localhost.example.com", "localhost.example.com"),
                                           ("http://128.0.0.1", "128.0.0.1")])
def test_plain_http_over_a_network_needs_insecure(tmp_path: Path, url: str, host: str) -> None:
    data = changed(SENDER, ("receiver", "url"), url)
    path = write(tmp_path, data)
    assert (f"{path}: receiver.url: http:// to {host!r}, not this machine, would send the bearer tokens and "
            "DTLS fingerprints in clear: use https://, or set insecure: true") in error_of(load_sender_config, path)
    data["receiver"]["insecure"] = True
    assert load_sender_config(write(tmp_path, data)).receiver.insecure


@pytest.mark.parametrize("load", [load_sender_config, load_receiver_config])
def test_short_tokens_are_refused_naming_the_camera(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    load: Any) -> None:
    monkeypatch.setenv("ADAPTCAST_TOKEN_LAB", "x" * 15)
    path = write(tmp_path, SENDER if load is load_sender_config else RECEIVER)
    assert (f"{path}: cameras[1]: the token of camera 'lab' (token_env ADAPTCAST_TOKEN_LAB) has 15 characters; "
            "at least 16 are needed") in error_of(load, path)
    monkeypatch.setenv("ADAPTCAST_TOKEN_LAB", "x" * 16)
    assert load(path).cameras[1].token.get_secret_value() == "x" * 16


def test_a_short_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "gate.token").write_text("short\n")
    path = write(tmp_path, {"cameras": [{"name": "gate", "token_file": "gate.token"}]}, "receiver.yaml")
    assert (f"{path}: cameras[0]: the token of camera 'gate' (token_file {str(tmp_path / 'gate.token')!r}) has 5 "
            "characters") in error_of(load_receiver_config, path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("receiver:\n  url: [unclosed\n", "line 3, column 1: invalid YAML"),
        ("receiver: {url: x}\nreceiver: {url: y}\n", "line 2, column 1: invalid YAML: duplicate key 'receiver'"),
        ("- a\n- b\n", "expected keys at the top level, got a list"),
        ("receiver: {url: https://rx}\ncameras:\n", "cameras: Input should be a list"),
        ("receiver: {url: https://rx}\ncameras: [gate]\n", "cameras[0]: Input should be a mapping of keys"),
    ],
)
def test_unusable_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "sender.yaml"
    path.write_text(text, encoding="utf-8")
    assert error_of(load_sender_config, path).startswith(f"{path}: {expected}")


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "sender.yaml"
    path.write_text(
        "receiver: {url: https://rx}\n"
        "cameras:\n"
        "  - &first {name: a, source: testpattern, token_env: ADAPTCAST_TOKEN_GATE, fps: 5}\n"
        "  - <<: *first\n"
        "    name: b\n",
        encoding="utf-8",
    )
    assert [(camera.name, camera.fps) for camera in load_sender_config(path).cameras] == [("a", 5), ("b", 5)]


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert error_of(load_receiver_config, path) == f"{path}: cannot read: No such file or directory"


def test_token_never_shows(tmp_path: Path) -> None:
    sender = load_sender_config(EXAMPLES / "sender.example.yaml")
    receiver = load_receiver_config(EXAMPLES / "receiver.example.yaml")
    for config in (sender, receiver):
        shown = [repr(config), str(config), config.model_dump_json(), str(config.model_dump()),
                 repr(config.cameras[0]), str(config.cameras[0].token)]
        for text in shown:
            for secret in TOKENS.values():
                assert secret not in text


def test_config_is_frozen() -> None:
    config = load_sender_config(EXAMPLES / "sender.example.yaml")
    with pytest.raises(ValueError):
        config.cameras[0].fps = 30  # type: ignore[misc]


def test_daemons_refuse_a_bad_config_at_start_up_naming_the_key(tmp_path):
    from tests.conftest import run_cli

    bad = tmp_path / "receiver.yaml"
    bad.write_text("listen: {port: 99999}\ncameras: [{name: gate, token_env: NOT_SET_ANYWHERE}]\n")
    done = run_cli("receiver", "--config", str(bad))
    assert done.returncode == 2
    assert "listen.port" in done.stderr and "NOT_SET_ANYWHERE" in done.stderr
