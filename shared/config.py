"""The sender's and the receiver's configuration: one YAML file per daemon, checked at start-up.

Every key is a pydantic field with a default where one makes sense, bounds and a description,
and unknown keys are errors, so a typo fails at start-up instead of being silently ignored.
`load_sender_config` and `load_receiver_config` turn every problem into one line of a
`ConfigError` that names the file and the key, as in `sender.yaml: cameras[1].fps: Input should
be greater than 0`.

Secrets never live in the file: each camera names an environment variable (`token_env`) or
a file (`token_file`) that holds its bearer token. The loader reads it at start-up and keeps
it as a `SecretStr`, so it shows in no repr, log line or dump.

Relative paths in a file are relative to the directory of that file, not to the working
directory, which for a daemon (systemd, a container) is rarely where the operator thinks.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from adaptcast.shared import timecode
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.defaults import DEFAULT_FIT_STEPS, DEFAULT_MODEL
from adaptcast.shared.errors import ConfigError
from adaptcast.shared.frames import MIN_CODED_SIDE, FrameSize, coded_size_problem
from adaptcast.shared.passwords import parse_password_hash

MODEL_FILE_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt")
"""A `model` value ending in one of these is a file path (as `load_model` reads it), not a name."""
TEST_PATTERN = "testpattern"
MIN_TOKEN_CHARS = 16
RECEIVER_PORT = 8080
"""The receiver's default port (WHIP, the live view, /metrics)."""
METRICS_PORT = 9101
"""The sender's default port for /metrics, /healthz and /readyz."""
RTSP_PORT = 8554
"""The receiver's default RTSP port (the protocol's own is 554, which needs root)."""
"""The shortest bearer token accepted: a guessable token lets anyone stream as the camera."""
_V4L2_DEVICE = re.compile(r"/dev/video\d+")
_Model = TypeVar("_Model", bound=BaseModel)
_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "model_type": "Input should be a mapping of keys",
    "tuple_type": "Input should be a list",
}
"""pydantic's messages that speak of Python rather than YAML, by error type."""


# ---------------------------------------------------------------------------------------------
# Field helpers


def _invalid(loc: tuple[str | int, ...], message: str, value: object) -> ValidationError:
    """An error placed at `loc` below the model being validated.

    A model validator's own errors point at the whole model; raising this one instead makes the
    message name the exact key (pydantic prefixes the outer location).
    """
    error = PydanticCustomError("config", "{message}", {"message": message})
    return ValidationError.from_exception_data("config", [InitErrorDetails(type=error, loc=loc, input=value)])


def _resolve(path: Path, info: ValidationInfo) -> Path:
    """`path` made absolute against the config file's directory.

    The loaders pass that directory as validation context; without it (a model validated
    directly) the working directory stands in.
    """
    base = (info.context or {}).get("base_dir") or Path.cwd()
    return Path(base) / path


def _existing_file(path: Path, info: ValidationInfo) -> Path:
    path = _resolve(path, info)
    _require_file(path, "file")
    return path


def _require_file(path: Path, what: str) -> None:
    """The path is quoted as Python would (a line break in it stays on the error's line), and a
    name the system cannot even look up (over 255 bytes, a NUL) is an error like a missing file."""
    try:
        found = path.is_file()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot look up {what} {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if not found:
        raise ValueError(f"no such {what}: {str(path)!r}")


def _parse_size(value: object) -> FrameSize:
    """`WxH` to a FrameSize; FrameSize itself checks that both sides are positive and even."""
    if isinstance(value, FrameSize):
        size = value
    elif isinstance(value, str):
        size = FrameSize.parse(value)
    else:
        # ValueError, not TypeError: pydantic turns only ValueError into a validation error
        raise ValueError(f"size must be a string like 320x240, got {value!r}")  # noqa: TRY004
    if problem := coded_size_problem(size.width, size.height):
        raise ValueError(problem)
    return size


def _model_spec(spec: str, info: ValidationInfo) -> str:
    """A model file path is resolved and must exist; a bundled or zoo name is left as it is."""
    if "/" in spec or spec.endswith(MODEL_FILE_SUFFIXES):
        return str(_existing_file(Path(spec), info))
    return spec


ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
ConfigPath = Annotated[Path, AfterValidator(_resolve)]
Size = Annotated[FrameSize, BeforeValidator(_parse_size)]
Port = Annotated[int, Field(ge=0, le=65535)]
Host = Annotated[str, Field(min_length=1)]
ModelSpec = Annotated[
    str,
    Field(min_length=1, description="A bundled model name (see `adaptcast models`), "
          "compressai:ssf2020:Q, or a model file path."),
    AfterValidator(_model_spec),
]
Device = Annotated[
    Literal["auto", "cpu", "cuda"],
    Field(description="Where the codec runs: auto picks cuda when a GPU is present."),
]


class _ConfigModel(BaseModel):
    """Unknown keys are errors and a loaded configuration never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Cameras


class CameraConfig(_ConfigModel):
    """A camera's name and where its bearer token is: an environment variable or a file.

    The receiver's cameras are exactly this; the sender's add where the video comes from.
    """

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The camera's name: in the WHIP URL, metric labels and archive file names.",
    )
    token_env: str | None = Field(
        None, pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="The environment variable holding this camera's bearer token "
        "(tokens never live in this file).",
    )
    token_file: ExistingFile | None = Field(
        None,
        description="Or: a file holding the token (a Kubernetes Secret volume, systemd's "
        "LoadCredential=); surrounding whitespace is ignored.",
    )
    _token: SecretStr = PrivateAttr()

    @field_validator("token_env")
    @classmethod
    def _check_token_set(cls, token_env: str | None) -> str | None:
        # Checked here, beside the other fields, so that a missing token is reported together
        # with the camera's other problems; the model validator below runs only without them.
        if token_env is not None and not os.environ.get(token_env):
            raise ValueError(f"environment variable {token_env!r} is not set or is empty")
        return token_env

    @model_validator(mode="after")
    def _read_token(self) -> CameraConfig:
        if self.token_env is not None and self.token_file is None:
            self._token = SecretStr(os.environ[self.token_env])
            return self
        if self.token_file is None or self.token_env is not None:
            raise ValueError("give exactly one of token_env and token_file")
        try:
            token = self.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read token_file {str(self.token_file)!r}: {exc}") from None
        if not token:
            raise ValueError(f"token_file {str(self.token_file)!r} is empty")
        self._token = SecretStr(token)
        return self

    @model_validator(mode="after")
    def _check_token_length(self) -> CameraConfig:
        length = len(self._token.get_secret_value())
        if length < MIN_TOKEN_CHARS:
            where = f"token_env {self.token_env}" if self.token_env else f"token_file {str(self.token_file)!r}"
            raise ValueError(f"the token of camera {self.name!r} ({where}) has {length} characters; at least "
                             f"{MIN_TOKEN_CHARS} are needed (make one with `openssl rand -hex 32`)")
        return self

    @property
    def token(self) -> SecretStr:
        """The bearer token read at load time; `.get_secret_value()` reveals it."""
        return self._token


def _source(source: str, info: ValidationInfo) -> str:
    """Check a camera source and return it in the form capture reads.

    RTSP URLs need a host; V4L2 devices are not checked (a camera may be plugged in later, and
    capture reopens it); anything else is a video file that must exist now.
    """
    if source == TEST_PATTERN or _V4L2_DEVICE.fullmatch(source):
        return source
    if "://" in source:
        parts = urlsplit(source)
        if parts.scheme not in ("rtsp", "rtsps"):
            raise ValueError(f"unsupported URL scheme {parts.scheme!r}: use rtsp:// or rtsps://")
        if not parts.hostname:
            raise ValueError(f"{source!r} has no host")
        return parts.scheme + source[len(parts.scheme):]  # a lower-case scheme, as capture expects
    path = _resolve(Path(source), info)
    _require_file(path, "video file")
    return str(path)


class BackgroundConfig(_ConfigModel):
    """A fixed camera's background picture: segments start from it instead of an I-frame."""

    enabled: bool = Field(True, description="Send a background picture and start segments from it; false "
                          "starts every segment with an I-frame.")
    window: int = Field(15, ge=1, le=300, description="Frames in the temporal median that estimates the background.")
    sample_seconds: float = Field(1.0, gt=0, le=600, description="Seconds between the frames the median takes.")
    refresh_db: float = Field(1.0, gt=0, le=40, description="Send a new background when the scene has drifted "
                              "this far (PSNR, dB) from the one sent: lighting, day and night, a parked car.")
    max_age_seconds: float = Field(600.0, gt=0, description="Send a new background at least this often.")
    min_interval_seconds: float = Field(30.0, ge=0, description="...and at most this often, whatever the drift.")
    refine_steps: int = Field(100, ge=0, le=1000, description="Latent refinement steps when coding a background.")
    lambda_scale: float = Field(4.0, gt=0, le=100, description="A background is refined towards the model's "
                                "lambda times this: a rare picture affords a higher quality than a frame.")


class BitrateConfig(_ConfigModel):
    """A target bitrate, as IP cameras offer: each segment's quality index is chosen to follow it
    (a variable-rate model), and lowered further when the link carries less."""

    target_kbps: float = Field(gt=0, le=1_000_000, description="Average bitrate to hold, in kbit/s, everything "
                               "the camera sends counted (latents, adapters, backgrounds).")
    max_kbps: float | None = Field(None, gt=0, le=1_000_000, description="No segment is aimed above this (a burst "
                                   "after a quiet spell is spread out below it); absent means twice the target.")

    @model_validator(mode="after")
    def _check_max(self) -> BitrateConfig:
        if self.max_kbps is not None and self.max_kbps < self.target_kbps:
            raise ValueError(f"max_kbps ({self.max_kbps}) is below target_kbps ({self.target_kbps})")
        return self

    @property
    def ceiling_kbps(self) -> float:
        return self.max_kbps if self.max_kbps is not None else 2 * self.target_kbps


class SenderCameraConfig(CameraConfig):
    """One camera the sender captures, codes and streams."""

    source: Annotated[str, Field(min_length=1), AfterValidator(_source)] = Field(
        description="rtsp:// or rtsps:// URL, 'testpattern', a V4L2 device (/dev/videoN), or a "
        "video file path (relative to this file; it must exist).",
    )
    loop: bool = Field(True, description="Files only: play the file again from the start when it ends.")
    size: Size = Field(
        FrameSize(320, 240),
        description=f"Coded frame size WxH; both sides even and at least {MIN_CODED_SIDE}. Frames are scaled to it.",
    )
    fps: float = Field(10.0, gt=0, le=60, description="Coded frames per second; the source is resampled to it.")
    timecode: bool = Field(False, description="Burn the capture time into the top rows of every frame, "
                           "machine-readable (shared/timecode.py), to measure glass-to-glass latency at any client; "
                           "it hides that part of the picture.")
    segment_seconds: float = Field(
        2.0, ge=0.2, le=60,
        description="Segment length: one adapter version per segment, swapped at its boundary.",
    )
    mode: AdaptMode = Field(
        AdaptMode.LIVE,
        description="live: code each segment at once with the adapter fitted on the one before "
        "(about a frame of latency); segment: fit on a segment before sending it (best quality, "
        "at least one segment of latency).",
    )
    adapt: bool = Field(True, description="Fit and send adapters; false streams with the base model only.")
    fit_steps: int = Field(DEFAULT_FIT_STEPS, ge=1, le=1000,
                           description="Optimisation steps when fitting each segment's adapter.")
    adapter_max_age_seconds: float = Field(
        10.0, gt=0,
        description="When fitting falls behind, an adapter fitted on frames older than this is dropped "
        "and segments are coded with the base model until a new fit lands.",
    )
    skip: bool = Field(True, description="Skip P-frames whose coding does not pay by the model's own "
                       "rate-distortion loss: the receiver shows the previous frame again.")
    background: BackgroundConfig = Field(default_factory=BackgroundConfig)
    refine_share: float = Field(0.5, ge=0, le=1, description="Share of a frame period a P-frame may take, "
                                "latent refinement included: the steps are set from the measured speed (none on "
                                "a small CPU, several on a GPU). 0 turns refinement off.")
    refine_max_steps: int = Field(10, ge=1, le=100, description="At most this many refinement steps a frame.")
    quality: float | None = Field(None, ge=0, le=64, description="Quality index of a variable-rate model (0 is "
                                  "its lowest rate; see `adaptcast models`); absent means the middle of its "
                                  "range. With a bitrate, where the controller starts.")
    bitrate: BitrateConfig | None = Field(None, description="Follow a target bitrate (needs a variable-rate model); "
                                          "absent codes every segment at `quality`.")
    adapter_gate: bool = Field(True, description="Send a new adapter version only when it is estimated to save "
                               "more than its update costs on the frames it will code (a static scene's "
                               "skipped frames gain nothing from it).")
    connect_timeout_seconds: float = Field(
        5.0, gt=0, description="Give up opening the source, or the connection to the receiver, after this long.",
    )
    reconnect_max_seconds: float = Field(
        30.0, gt=0,
        description="The longest wait between attempts to reopen a failed source, or to reconnect to the "
        "receiver (backoff cap).",
    )

    @property
    def segment_frames(self) -> int:
        """Frames per segment: `segment_seconds` at `fps`, at least one."""
        return max(1, round(self.segment_seconds * self.fps))

    @model_validator(mode="after")
    def _check_timecode_fits(self) -> SenderCameraConfig:
        if self.timecode and self.size.height < timecode.ROWS * timecode.block_size(self.size.width):
            raise ValueError(f"a timecode does not fit in {self.size}: frames must be at least a tenth as high as wide")
        return self


def _check_camera_list(cameras: tuple[CameraConfig, ...]) -> None:
    """At least one camera, and no two with one name: names key WHIP URLs, metrics and the archive.

    Checked here rather than with `min_length`, which pydantic also reports (wrongly, as an
    empty list) when every camera has an error of its own.
    """
    if not cameras:
        raise ValueError("at least one camera is needed")
    _check_unique_names(cameras, "camera")


def _check_unique_names(items: Sequence[CameraConfig | ViewerConfig], what: str) -> None:
    """No two `what`s (camera, viewer) with one name; the error points at the second."""
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.name in first:
            raise _invalid((index, "name"), f"{what} name {item.name!r} is already used by "
                           f"{what}s[{first[item.name]}]", item.name)
        first[item.name] = index


# ---------------------------------------------------------------------------------------------
# Sender


def _is_loopback(host: str | None) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1: traffic that never leaves this machine (None: a URL without a host)."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost
        return False


class ReceiverLinkConfig(_ConfigModel):
    """Where the sender sends its streams."""

    url: str = Field(
        description="Base URL of the receiver: https://, or http:// to this machine (localhost, 127.0.0.0/8, "
        "::1) unless `insecure` is set; a camera's WHIP endpoint is {url}/whip/{camera}.",
    )
    ca_file: ExistingFile | None = Field(
        None, description="CA bundle to verify an https:// receiver signed by a private CA (relative to this file).",
    )
    insecure: bool = Field(
        False, description="Allow an http:// url to a host other than this machine. Signaling carries the bearer "
        "tokens and the DTLS fingerprints that authenticate the media, so plain HTTP over a network gives both "
        "away (RFC 9725 requires HTTPS): only for a network trusted as a whole, such as a compose network.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {url!r}")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in the URL: tokens come from each camera's token_env "
                             "or token_file")
        if parts.query or parts.fragment:
            raise ValueError("the URL must not have a query or a fragment")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _check_plain_http(self) -> ReceiverLinkConfig:
        if self.url.startswith("https://"):
            return self
        if self.ca_file is not None:
            raise _invalid(("ca_file",), "ca_file applies only to an https:// url", str(self.ca_file))
        host = urlsplit(self.url).hostname
        if not self.insecure and not _is_loopback(host):
            raise _invalid(("url",), f"http:// to {host!r}, not this machine, would send the bearer tokens and DTLS "
                           "fingerprints in clear: use https://, or set insecure: true for a network you trust",
                           self.url)
        return self

    def whip_url(self, camera: str) -> str:
        """The WHIP endpoint a camera's sender POSTs its offer to."""
        return f"{self.url}/whip/{camera}"

    @property
    def ready_url(self) -> str:
        """The receiver's readiness endpoint, which a sender polls while the receiver is unreachable."""
        return f"{self.url}/readyz"


class TlsConfig(_ConfigModel):
    """A certificate for HTTPS: the receiver's signaling (and with it the DTLS fingerprints), or
    the sender's metrics."""

    cert_file: ExistingFile = Field(description="PEM certificate chain (relative to this file).")
    key_file: ExistingFile = Field(description="PEM private key (relative to this file).")

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


class MetricsConfig(_ConfigModel):
    """Where the sender serves /metrics, /healthz and /readyz."""

    host: Host = Field("127.0.0.1", description="Address to bind; the default is reachable from this machine only.")
    port: Port = Field(METRICS_PORT, description="TCP port; 0 picks any free port.")
    tls: TlsConfig | None = Field(None, description="Serve HTTPS with this certificate; absent means plain HTTP.")


class SenderConfig(_ConfigModel):
    """The sender daemon's configuration (edge box)."""

    receiver: ReceiverLinkConfig = Field(description="The receiver the streams go to.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Metrics and health endpoints.")
    model: ModelSpec = DEFAULT_MODEL
    device: Device = "auto"
    cameras: tuple[SenderCameraConfig, ...] = Field(description="The cameras to stream.")

    @field_validator("cameras")
    @classmethod
    def _check_cameras(cls, cameras: tuple[SenderCameraConfig, ...]) -> tuple[SenderCameraConfig, ...]:
        _check_camera_list(cameras)
        return cameras


# ---------------------------------------------------------------------------------------------
# Receiver


class ListenConfig(_ConfigModel):
    """Where the receiver serves WHIP, the live view, /metrics (unless `metrics` moves it), /healthz and /readyz."""

    host: Host = Field(
        "127.0.0.1",
        description="Address to bind. The default is reachable from this machine only: nothing "
        "listens on all interfaces unless this says so (0.0.0.0 or ::).",
    )
    port: Port = Field(RECEIVER_PORT, description="TCP port; 0 picks any free port.")


class ArchiveConfig(_ConfigModel):
    """Keep each camera's received bitstream on disk, deleting its oldest files past either limit."""

    dir: ConfigPath = Field(description="Directory for the archive (relative to this file); created if missing.")
    max_age_hours: float = Field(168.0, gt=0, description="Delete recordings older than this.")
    max_bytes: int = Field(
        10 * 1024**3, gt=0, description="Per camera: delete its oldest recordings while they take more than this.",
    )
    max_file_bytes: int = Field(
        64 * 1024**2, ge=1024**2, description="A file (one segment) ends at this size and the rest of its segment "
        "is not archived (counted): a sender that never starts a new segment cannot grow one file forever.",
    )
    min_free_bytes: int = Field(
        1024**3, ge=0, description="Below this much free space on the archive's disk no new file is started "
        "(counted, adaptcast_receiver_archive_paused) until space is back, rather than filling the disk.",
    )


class ReceiverMetricsConfig(MetricsConfig):
    """A listener of the receiver's own for /metrics, apart from WHIP and the live view (as MediaMTX has)."""

    port: Port = Field(9102, description="TCP port; 0 picks any free port.")


def _password_hash(text: str) -> str:
    parse_password_hash(text)
    return text


class ViewerConfig(_ConfigModel):
    """An account that may watch: the live view, /api/cameras and the cameras' pictures."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="The name to log in with.")
    password_hash: Annotated[str, AfterValidator(_password_hash)] = Field(
        repr=False, description="The password's scrypt hash, as `adaptcast hash-password` writes it "
        "(never the password itself).",
    )


def _host_name(name: str) -> str:
    return name.lower().rstrip(".")


HostName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9.])?$"), AfterValidator(_host_name),
]


class PeerLimitsConfig(_ConfigModel):
    """What one camera or one remote address may ask of the receiver: offers, sessions, buffered data."""

    offers_per_second: float = Field(
        0.5, gt=0, le=1000, description="Per camera: WHIP offers a second, sustained (after the burst); more get "
                                        "429 with Retry-After. A sender reconnects with backoff, far below this.",
    )
    offer_burst: int = Field(5, ge=1, le=1000, description="Per camera: offers taken at once before the rate applies.")
    address_offers_per_second: float = Field(
        2.0, gt=0, le=1000, description="Per remote address, whatever the camera and the token (checked before "
                                        "the token): offers a second, sustained. Cameras behind one NAT share it.",
    )
    address_offer_burst: int = Field(20, ge=1, le=10000, description="Per remote address: offers taken at once.")
    sessions_per_address: int = Field(
        32, ge=1, le=10000, description="Sessions one remote address may hold at once, across cameras (each "
                                        "camera has one session at most); one more offer gets 429.",
    )
    sctp_buffer_bytes: int = Field(
        4 * 1024**2, ge=256 * 1024, le=1024**3,
        description="Per session: bytes the SCTP association may hold for unfinished or out-of-order messages "
                    "(512 bytes charged a chunk besides its data) before it is aborted and the session closed. "
                    "A sender never holds more in flight than its congestion window; messages are at most 16 KiB.",
    )


class StreamLimits(_ConfigModel):
    """What the receiver accepts of a camera's stream, checked before any of it is decoded: a
    stream header may claim up to 8192x8192, which would make a decode worker allocate gigabytes."""

    max_size: Size = Field(
        FrameSize(1920, 1080),
        description="Largest frame size WxH a stream header may claim; a stream wider or taller is refused.",
    )
    max_fps: float = Field(30.0, gt=0, le=1000, description="Highest frame rate a stream header may claim.")
    queue_bytes: int = Field(
        64 << 20, ge=1 << 20, le=1 << 34,
        description="Bytes of received records that may wait for the decoder; records beyond it are dropped "
                    "(queue_full), as are those beyond 600 records.",
    )


class ReceiverCameraConfig(CameraConfig):
    """A camera the receiver accepts, with its own limits where the receiver's do not fit it."""

    stream_limits: StreamLimits | None = Field(
        None, description="What this camera's stream may claim, in place of the receiver's `stream_limits`.")


class H264Config(_ConfigModel):
    """How each camera's decoded video is encoded, once, for its RTSP and WHEP clients."""

    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = Field(
        "veryfast", description="libx264 preset: faster presets cost less CPU a frame and more bits.",
    )
    bitrate_kbps: int = Field(2000, ge=50, le=100_000, description="Bitrate of each camera's stream, in kbit/s "
                              "(also its VBV cap over one second).")
    keyframe_interval_seconds: float = Field(
        2.0, gt=0, le=60, description="A keyframe at least this often (and at once for a client that joins or "
        "loses frames): how long a client waits for a picture.",
    )


class RtspConfig(_ConfigModel):
    """The RTSP server re-publishing each camera at rtsp://HOST:PORT/CAMERA for NVRs and players."""

    enabled: bool = Field(False, description="Serve RTSP (needs GStreamer's RTSP server and PyGObject, from "
                          "Debian's python3-gi and gir1.2-gst-rtsp-server-1.0, for `python`).")
    host: Host = Field("0.0.0.0", description="Address to bind.")
    port: Port = Field(RTSP_PORT, description="TCP port for RTSP (RTP over UDP uses ports the clients negotiate).")
    python: str = Field("/usr/bin/python3", min_length=1,
                        description="The Python that runs the RTSP server: one with PyGObject and GStreamer.")
    tls: TlsConfig | None = Field(None, description="Serve rtsps:// (RTSP over TLS, plain RTSP refused) with this "
                                  "certificate, so that viewers' passwords do not cross the network in clear text; "
                                  "absent means plain RTSP.")


class WhepConfig(_ConfigModel):
    """WebRTC playback (WHEP) of each camera, which the live view uses before MJPEG."""

    enabled: bool = Field(True, description="Serve WHEP at /whep/CAMERA; false leaves the live view on MJPEG.")
    max_sessions: int = Field(16, ge=1, le=1000, description="WHEP sessions at once, all cameras together.")
    viewer_timeout_seconds: float = Field(
        10.0, ge=2, le=120, description="A WHEP session whose viewer sent no RTCP receiver report for this long "
        "ends (its viewer is gone); without it a vanished viewer would hold its session and encoder for the "
        "30 s of ICE consent checks.",
    )


WORKER_MEMORY_MB = 3072
"""A decode worker's default address-space headroom: decoding 1920x1080 frames grew a worker's
address space by 0.7 GB (its resident memory by 0.7 GB too), so this leaves room for more threads
and an adapter or two."""


class ReceiverConfig(_ConfigModel):
    """The receiver daemon's configuration (monitoring station)."""

    listen: ListenConfig = Field(default_factory=ListenConfig, description="The HTTP(S) server.")
    tls: TlsConfig | None = Field(None, description="Serve HTTPS with this certificate; absent means plain HTTP.")
    model: ModelSpec = DEFAULT_MODEL
    models: tuple[ModelSpec, ...] = Field(
        (), description="Other models a stream may be coded with (names or files), loaded when a stream names "
                        "one by its SHA-256; the bundled models are found without being listed.",
    )
    device: Device = "auto"
    archive: ArchiveConfig | None = Field(None, description="Archive the received streams; absent means no archive.")
    cameras: tuple[ReceiverCameraConfig, ...] = Field(description="The cameras allowed to send.")
    stream_limits: StreamLimits = Field(
        default_factory=StreamLimits, description="What every camera's stream may claim, unless the camera has "
                                                  "stream limits of its own.",
    )
    workers: int = Field(1, ge=1, le=64, description="Decode worker processes.")
    worker_memory_mb: int | None = Field(
        WORKER_MEMORY_MB, ge=512, le=1 << 20,
        description="Address space (RLIMIT_AS) each decode worker may take on the CPU beyond what it holds with "
                    "the model loaded, in MiB; a record that needs more is refused (internal); null: no limit. "
                    "Ignored on a GPU, whose driver reserves far more address space: limit the service's memory "
                    "there (systemd MemoryMax=, a Kubernetes memory limit).",
    )
    threads_per_worker: int | None = Field(
        None, ge=1, le=256,
        description="Torch threads in each decode worker; absent means the usable cores shared out among the "
                    "workers. Lower it when the box runs other heavy work (a sender, a second receiver): "
                    "OpenMP pools that add up to more threads than cores slow every decode down.",
    )
    heartbeat_timeout_seconds: float = Field(
        5.0, gt=0, description="Consider a sender gone after this long without a message.",
    )
    metrics: ReceiverMetricsConfig | None = Field(
        None, description="Serve /metrics on a listener of its own, and no longer on `listen`; absent means "
        "/metrics is on `listen`, where anyone who reaches the port reads the camera names and counters.",
    )
    viewers: tuple[ViewerConfig, ...] = Field(
        (), description="Accounts that may watch (the live view, /api/cameras, the pictures); none means the "
        "live view is closed.",
    )
    viewer_session_hours: float = Field(12.0, gt=0, le=24 * 31, description="A viewer's login lasts this long.")
    allowed_hosts: tuple[HostName, ...] = Field(
        (), description="Host names the live view answers to, besides IP addresses and localhost: a request "
        "for any other name is refused, which defeats DNS rebinding.",
    )
    peer_limits: PeerLimitsConfig = Field(default_factory=PeerLimitsConfig,
                                     description="Caps on offers, sessions and buffered data per camera and address.")
    h264: H264Config = Field(default_factory=H264Config, description="Encoding for RTSP and WHEP clients.")
    rtsp: RtspConfig = Field(default_factory=RtspConfig, description="Re-publishing over RTSP.")
    whep: WhepConfig = Field(default_factory=WhepConfig, description="Playback over WebRTC (WHEP).")

    @field_validator("cameras")
    @classmethod
    def _check_cameras(cls, cameras: tuple[ReceiverCameraConfig, ...]) -> tuple[ReceiverCameraConfig, ...]:
        _check_camera_list(cameras)
        return cameras

    @field_validator("viewers")
    @classmethod
    def _check_viewers(cls, viewers: tuple[ViewerConfig, ...]) -> tuple[ViewerConfig, ...]:
        _check_unique_names(viewers, "viewer")
        return viewers

    @model_validator(mode="after")
    def _check_metrics_listener(self) -> ReceiverConfig:
        if self.metrics and self.metrics.port and (self.metrics.host, self.metrics.port) == (
                self.listen.host, self.listen.port):
            raise _invalid(("metrics", "port"), "the metrics listener needs another port than `listen`",
                           self.metrics.port)
        return self

    def limits_for(self, camera: ReceiverCameraConfig) -> StreamLimits:
        """The limits `camera`'s stream is held to: its own, else the receiver's."""
        return camera.stream_limits or self.stream_limits


# ---------------------------------------------------------------------------------------------
# Loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error.

    Plain YAML keeps the last value silently, so a copied camera block with one key left
    unchanged would quietly override the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: its keys may be overridden, that is what it is for
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected keys at the top level, got a {type(data).__name__}")
    return data


def _key_path(loc: tuple[str | int, ...]) -> str:
    """pydantic's ('cameras', 1, 'fps') as cameras[1].fps; a key that would not read as one
    (empty, blank, a line break in it) quoted as Python would."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = part if part.isprintable() and part.strip() == part and part else repr(part)
        text = f"{text}.{name}" if text else name
    return text


def _describe(path: Path, error: ValidationError) -> str:
    """One line per problem, each naming the file and the key."""
    lines = []
    for problem in error.errors():
        message = _MESSAGES.get(problem["type"]) or problem["msg"].removeprefix("Value error, ")
        key = _key_path(problem["loc"])
        lines.append(f"{path}: {key}: {message}" if key else f"{path}: {message}")
    return "\n".join(lines)


def _load(path: str | Path, model: type[_Model]) -> _Model:
    path = Path(path)
    data = _read_yaml(path)
    try:
        return model.model_validate(data, context={"base_dir": path.absolute().parent})
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from None


def load_sender_config(path: str | Path) -> SenderConfig:
    """Read and check a sender's YAML file; any problem raises ConfigError naming every bad key."""
    return _load(path, SenderConfig)


def load_receiver_config(path: str | Path) -> ReceiverConfig:
    """Read and check a receiver's YAML file; any problem raises ConfigError naming every bad key."""
    return _load(path, ReceiverConfig)
