"""Base model files: safetensors weights plus JSON metadata, and every way to name a model.

One format for every base model. The metadata carries the architecture, widths, lambda and
how the model was trained, and a SHA-256 of the weights that every stream names, so that a
receiver never decodes a stream with a model other than the one it was coded with.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from adaptcast.shared.codec.bitstream import snap_quality
from adaptcast.shared.codec.defaults import DEFAULT_MODEL
from adaptcast.shared.codec.ssf import COMPRESSAI_WIDTHS, ScaleSpaceFlow, SSFWidths, interpolate_lambda
from adaptcast.shared.errors import ModelError
from adaptcast.shared.resources import resource_path

BUNDLED_DIR = resource_path("adaptcast.shared", "models")
METADATA_KEY = "adaptcast_model"
FORMAT_VERSION = 1
ARCHITECTURE = "ssf2020"
ZOO_PREFIX = "compressai:ssf2020:"


@dataclass
class ModelInfo:
    """What a model file says about itself."""

    name: str
    widths: SSFWidths
    lmbda: float | None = None
    """Rate-distortion trade-off it was trained for (loss = lmbda * 255^2 * MSE + bpp)."""
    quality: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    """Command, data, steps, wall time and machine of the training run."""
    sha256: str = ""
    """SHA-256 of the weights as stored: the identity every stream names."""
    rate_lambdas: list[float] = field(default_factory=list)
    """A variable-rate model's rate points (quality index i is rate_lambdas[i]); empty for a
    single-rate model, whose trade-off is `lmbda`."""

    @property
    def variable_rate(self) -> bool:
        return bool(self.rate_lambdas)

    @property
    def max_quality(self) -> float:
        """The highest quality index (0 for a single-rate model, which has just one)."""
        return float(len(self.rate_lambdas) - 1) if self.rate_lambdas else 0.0

    def coding_quality(self, quality: float | None) -> float:
        """The quality index to code at, as it travels: the middle of a variable-rate model's
        range by default; a single-rate model has only 0."""
        if quality is None:
            return snap_quality(self.max_quality / 2)
        if not 0 <= quality <= self.max_quality:
            raise ModelError(f"model {self.name} codes quality indexes 0..{self.max_quality:g}, not {quality:g}")
        return snap_quality(quality)

    def lambda_at(self, quality: float | None = None) -> float | None:
        """The rate-distortion trade-off the model codes at `quality` (default: the quality it
        codes at by default); None if unknown."""
        if not self.rate_lambdas:
            return self.lmbda
        return interpolate_lambda(self.rate_lambdas, self.coding_quality(quality))

    def required_lambda(self, quality: float | None = None) -> float:
        """`lambda_at` for a tool that weighs bits against distortion (adapter fitting, latent
        refinement, skip decisions, backgrounds): ModelError for a model whose metadata has none."""
        lmbda = self.lambda_at(quality)
        if lmbda is None:
            raise ModelError(f"model {self.name} has no lambda in its metadata: cannot fit adapters, refine "
                             "latents, decide skips or code backgrounds for it (try --no-skip --no-background "
                             "--no-adapter-gate)")
        return lmbda

    def to_json(self) -> str:
        record = asdict(self)
        record.update(format=FORMAT_VERSION, architecture=ARCHITECTURE)
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        try:
            record = json.loads(text)
            if record.pop("format") != FORMAT_VERSION or record.pop("architecture") != ARCHITECTURE:
                raise ValueError("unsupported format or architecture")
            record["widths"] = SSFWidths(**record["widths"])
            return cls(**record)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"model metadata is malformed: {exc}") from None


@dataclass
class LoadedModel:
    """A model in evaluation mode, on the CPU, with its entropy tables ready."""

    model: ScaleSpaceFlow
    info: ModelInfo


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of names, dtypes, shapes and bytes, independent of file layout."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_model(model: ScaleSpaceFlow, info: ModelInfo, path: str | Path, half: bool = True) -> ModelInfo:
    """Write `model` to `path`; with `half`, parameters are rounded to float16 first.

    Buffers (entropy tables, the scale table, likelihood bounds such as 1e-9, which float16
    would flush to zero) keep their precision. The entropy tables are rebuilt after rounding,
    on the CPU, so that the stored tables are exactly the ones the stored weights imply, and
    both ends read rather than recompute them.
    """
    model = model.to("cpu").eval()
    parameters = {name for name, _ in model.named_parameters()}
    if half:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.half().float())
    model.update(force=True)
    state = {
        name: (tensor.half() if half and name in parameters else tensor).detach().contiguous()
        for name, tensor in model.state_dict().items()
    }
    info.sha256 = weights_sha256(state)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={METADATA_KEY: info.to_json()})
    return info


def _model_from_state(state: dict[str, torch.Tensor], widths: SSFWidths,
                      rate_lambdas: list[float] | None = None) -> ScaleSpaceFlow:
    model = ScaleSpaceFlow(widths, rate_lambdas=rate_lambdas)
    state = {name: t.float() if t.is_floating_point() else t for name, t in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"weights do not fit the {widths} architecture: {str(exc).splitlines()[0]}") from None
    if not all(hp.gaussian_conditional._offset.numel() for hp in model.hyperpriors().values()):
        model.update(force=True)
    return model.eval()


def load_model_file(path: str | Path) -> LoadedModel:
    """Load one of our model files, checking its SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from None
    if METADATA_KEY not in metadata:
        raise ModelError(f"{path} is not an adaptcast model file (no {METADATA_KEY} metadata)")
    info = ModelInfo.from_json(metadata[METADATA_KEY])
    if weights_sha256(state) != info.sha256:
        raise ModelError(f"{path}: weights do not match their SHA-256 (file corrupted)")
    return LoadedModel(_model_from_state(state, info.widths, info.rate_lambdas), info)


def load_compressai_checkpoint(path: str | Path) -> LoadedModel:
    """Load a CompressAI `ssf2020` checkpoint (.pth.tar) downloaded from its model zoo.

    Read with `weights_only=True`: a file is never unpickled into arbitrary objects.
    """
    from compressai.zoo.pretrained import load_pretrained

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot read CompressAI checkpoint {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = load_pretrained(state)
    model = _model_from_state(state, COMPRESSAI_WIDTHS)
    model.update(force=True)
    info = ModelInfo(name=Path(path).name, widths=COMPRESSAI_WIDTHS, quality=Path(path).stem,
                     training={"source": "CompressAI model zoo"}, sha256=weights_sha256(model.state_dict()))
    return LoadedModel(model, info)


def load_compressai_zoo(quality: int, timeout_s: float = 5.0) -> LoadedModel:
    """CompressAI's published ssf2020 weights at `quality`, from its zoo or the local cache."""
    from compressai.zoo.video import model_urls
    from torch.hub import download_url_to_file, get_dir

    if quality not in range(1, 10):
        raise ModelError(f"compressai:ssf2020 quality must be 1..9, got {quality}")
    url = model_urls["ssf2020"]["mse"][quality]
    cached = Path(get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            download_url_to_file(url, str(cached), progress=False)
        except OSError as exc:
            raise ModelError(
                f"cannot download {url} ({exc.__class__.__name__}: {exc}); download it on a machine "
                f"that is online and pass it as --model /path/to/{cached.name}"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    return load_compressai_checkpoint(cached)


def bundled_models() -> list[Path]:
    return sorted(BUNDLED_DIR.glob("*.safetensors"))


def _claimed_sha256(path: Path) -> str | None:
    """The SHA-256 a model file's metadata claims, read without its weights (None if unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return ModelInfo.from_json((handle.metadata() or {})[METADATA_KEY]).sha256
    except (SafetensorError, OSError, ValueError, KeyError, ModelError):
        return None


class ModelLibrary:
    """The models a decoder finds by the SHA-256 a stream names: the configured ones, then the
    bundled ones. A model is loaded (and its SHA-256 checked) when a stream first names it, and
    kept: a station whose cameras use different models decodes them all without being told which.
    """

    def __init__(self, specs: Sequence[str | Path] = (), loaded: Sequence[LoadedModel] = ()) -> None:
        self._specs = [str(spec) for spec in specs] + [str(path) for path in bundled_models()]
        self._paths = {spec: model_file_path(spec) for spec in self._specs}  # an unknown name fails here
        self._loaded = {model.info.sha256: model for model in loaded}
        self._claims: dict[str, str | None] = {}
        """Each spec's SHA-256, once looked at: a file's claimed one (read from its metadata), a
        CompressAI checkpoint's computed one (it is loaded to know it)."""

    def _claim(self, spec: str) -> str | None:
        if spec not in self._claims:
            path = self._paths[spec]
            if path is None:  # a CompressAI checkpoint: its digest is known only once loaded
                loaded = load_model(spec)
                self._loaded[loaded.info.sha256] = loaded
                self._claims[spec] = None  # found among the loaded ones from now on
            else:
                self._claims[spec] = _claimed_sha256(path)
        return self._claims[spec]

    @classmethod
    def holding(cls, *loaded: LoadedModel) -> ModelLibrary:
        """A library that has these models at hand, and the bundled ones."""
        return cls(loaded=loaded)

    def find(self, sha256: str, name: str = "") -> LoadedModel:
        """The model whose weights have this SHA-256; ModelError naming what was searched if none."""
        if sha256 in self._loaded:
            return self._loaded[sha256]
        for spec in self._specs:
            claim = self._claim(spec)
            if sha256 in self._loaded:  # a CompressAI checkpoint, just loaded to know its digest
                return self._loaded[sha256]
            path = self._paths[spec]
            if claim == sha256 and path is not None:  # load_model_file checks the weights against the claim
                self._loaded[sha256] = load_model_file(path)
                return self._loaded[sha256]
        searched = ", ".join([model.info.name for model in self._loaded.values()] +
                             [Path(spec).stem for spec in self._specs])
        raise ModelError(f"no model has sha256 {sha256[:16]}{f' ({name})' if name else ''}; searched {searched}: "
                         "give the model file it was coded with")


def model_file_path(spec: str | Path) -> Path | None:
    """The model file a bundled name or a path names; None for a CompressAI checkpoint or zoo
    model; ModelError for a name that is neither."""
    spec = str(spec)
    if spec.startswith(ZOO_PREFIX) or spec.endswith((".pth", ".pth.tar", ".pt")):
        return None
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists():
        return path
    bundled = BUNDLED_DIR / f"{spec}.safetensors"
    if bundled.is_file():
        return bundled
    names = ", ".join(p.stem for p in bundled_models()) or "none"
    raise ModelError(f"unknown model {spec!r}: not a file, and not a bundled model ({names})")


def load_model(spec: str | Path | None = None) -> LoadedModel:
    """Load a model named by a bundled name, a file path, or `compressai:ssf2020:Q`."""
    spec = str(spec or DEFAULT_MODEL)
    path = model_file_path(spec)
    if path is not None:
        return load_model_file(path)
    if spec.startswith(ZOO_PREFIX):
        quality = spec[len(ZOO_PREFIX):]
        if not quality.isdigit():
            raise ModelError(f"expected {ZOO_PREFIX}Q with Q in 1..9, got {spec}")
        return load_compressai_zoo(int(quality))
    return load_compressai_checkpoint(spec)
