"""``biomed import SOURCE --name NAME [--description FILE]``: serve a model made elsewhere (docs/import.md)."""

from __future__ import annotations

import argparse
import os

from biomed.settings import env


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import an ONNX or TorchScript model with its description, or a MONAI bundle",
                       description="Compose adapters in front of and behind a model made elsewhere so it takes this "
                                   "service's input and gives its output, verify the result, and store it as "
                                   "NAME:VERSION (printed). SOURCE: an ONNX file or a TorchScript file with "
                                   "--description (YAML or JSON, biomed/data/import.schema.json), or a MONAI bundle "
                                   "folder. A refusal names what is wrong and writes nothing.")
    p.add_argument("source", metavar="SOURCE", help="model.onnx, model.ts (TorchScript), or a MONAI bundle folder")
    p.add_argument("--name", required=True, help="the model's name in the store")
    p.add_argument("--description", metavar="FILE", help="what the model takes and gives (YAML or JSON); a MONAI "
                   "bundle's is read from its configs unless given")
    p.add_argument("--store", help=f"a model store folder (default: {env('model_store')}, else BentoML's store)")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from training.importing import import_source

    where = args.store or os.environ.get(env("model_store")) or None
    print(import_source(args.source, args.name, args.description, where))
    return 0
