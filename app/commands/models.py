"""`adaptcast models`: the bundled base models with their metadata."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptcast.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object a model")


def run(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.defaults import DEFAULT_MODEL
    from adaptcast.shared.codec.modelfile import bundled_models, load_model_file

    for path in bundled_models():
        info = load_model_file(path).info
        default = " (default)" if path.stem == DEFAULT_MODEL else ""
        if args.json:
            print(json.dumps({"name": path.stem, "default": bool(default), **json.loads(info.to_json())}))
            continue
        w = info.widths
        init = info.training.get("init")
        origin = f" (fine-tuned from {Path(init).stem})" if init else ""
        rate = (f"variable rate, quality 0..{info.max_quality:g} (lambda {', '.join(map(str, info.rate_lambdas))})"
                if info.variable_rate else f"lambda {info.lmbda}")
        print(f"{path.stem}{default}: ssf2020 widths {w.mid}/{w.latent}/{w.hyper}, {rate}, "
              f"{info.training.get('steps', '?')} steps{origin}, sha256 {info.sha256[:16]}")
    return 0


COMMAND = Command("models", "list the bundled base models", add_arguments, run)
