"""The ``biomed`` command line. Arguments are parsed here, once, and handed on as plain values.

Heavy imports (torch, bentoml) happen inside each command, so ``biomed --help``
is fast and ``biomed serve`` never loads torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from biomed.settings import env


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line naming the problem, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def cmd_demo_data(args: argparse.Namespace) -> int:
    from training.demo import generate

    motifs = tuple(m.strip() for m in args.motifs.split(",") if m.strip())
    print(generate(args.kind, Path(args.out), n=args.n, seed=args.seed, motifs=motifs, length=args.length,
                   contigs=args.contigs, variants=args.variants))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models import build_model
    from training.args import config_from, print_summary

    config = config_from(args)
    build_model(config.kind, config.arch)  # fail fast on an unknown arch
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _torchrun(args)
    from training.train import fit

    summary = fit(config, resume=bool(args.resume))
    if summary:
        print_summary(config.out, summary)
    return 0


def _torchrun(args: argparse.Namespace) -> int:
    """Launch the training module under torchrun, one process per rank, on this host."""
    import subprocess

    from training.args import without_nproc

    argv = without_nproc(list(args.argv[args.argv.index("train") + 1 :]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "training.train", *argv]
    return subprocess.call(cmd)


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_run

    exported = export_run(args.run, args.name, quantize=args.quantize, fp16=args.fp16, force=args.force)
    print(exported.tag)
    print(_export_note(exported.tag), file=sys.stderr)
    return 0


def _export_note(tag: str) -> str:
    """What an export means for the servers following its name (stdout stays the tag alone, for scripts)."""
    from biomed import store

    name, version = store.split_ref(tag)
    promoted = store.rollout_default(store.rollout_of(name), version)
    if promoted and promoted != version:
        return (f"biomed: {tag} is in the store; servers following {name} keep serving {name}:{promoted}, the "
                f"promoted version, until `biomed models promote {tag}`")
    return (f"biomed: {tag} is now the newest version of {name}: servers following {name} ({env('models')}={name}, "
            f"nothing promoted) load it and serve it as the default within {env('model_poll_s')} (10 s); to stage "
            f"exports instead, promote the version serving now first (`biomed models promote {name}:VERSION`)")


def cmd_models(args: argparse.Namespace) -> int:
    """``biomed models [--json]``: the store's models; ``promote NAME:VERSION`` and ``canary NAME:VERSION PERCENT``:
    the rollout every server watching the store takes up (docs/deployment.md, "Rolling out a new model version")."""
    from biomed import store
    from biomed.store import Row, biomed_models

    where = args.store or os.environ.get(env("model_store")) or None
    if args.action in ("promote", "canary"):
        if not args.ref:
            raise ValueError(f"biomed models {args.action} needs NAME:VERSION")
        if args.action == "promote":
            if args.percent is not None:
                raise ValueError("biomed models promote takes NAME:VERSION only")
            if not store.split_ref(args.ref)[1]:
                raise ValueError(f"biomed models promote needs NAME:VERSION (or {args.ref}:latest: follow the newest "
                                 f"export); `biomed models` lists the versions")
            ended = store.rollout_of(store.split_ref(args.ref)[0], where).get("canary") or {}
            rollout = store.promote(args.ref, where)
            canary = ", ".join(f"{v} {p:g}%" for v, p in ended.items())
            default = "the newest export" if rollout["default"] == store.LATEST else rollout["default"]
            print(f"{rollout['model']}: default {default}" + (f" (canary {canary} ended)" if canary else "")
                  + f"; servers watching the store take it up within {env('model_poll_s')}")
        else:
            if args.percent is None:
                raise ValueError("biomed models canary needs NAME:VERSION PERCENT (0 ends it)")
            rollout = store.set_canary(args.ref, args.percent, where)
            shares = ", ".join(f"{v} {p:g}%" for v, p in rollout["canary"].items()) or "none"
            print(f"{rollout['model']}: canary {shares}")
        return 0
    if args.ref is not None:
        raise ValueError("biomed models lists the store; use: biomed models promote|canary NAME:VERSION ...")
    rows = [Row.of(m) for m in biomed_models(where)]
    rollouts = {name: store.rollout_of(name, where) for name in {r.name for r in rows}}

    def rollout(r: Row) -> str:
        ro = rollouts.get(r.name, {})
        share = (ro.get("canary") or {}).get(r.version)
        return "default" if ro.get("default") == r.version else f"canary {share:g}%" if share else ""

    if args.json:
        import json
        from dataclasses import asdict

        print(json.dumps([{**asdict(r), "rollout": rollout(r),  # an imported model's source, description, checks
                           **(store.imported(r.name, r.version, where) if r.source != "biomed" else {})}
                          for r in rows], indent=2))
        return 0
    print(f"{'NAME':<16} {'VERSION':<26} {'KIND':<6} {'VARIANT':<7} {'AUROC':>6}  {'ROLLOUT':<12} {'SOURCE':<12} LABELS")
    for r in rows:
        print(f"{r.name:<16} {r.version:<26} {r.kind:<6} {r.variant:<7} {r.auroc:6.3f}  {rollout(r):<12} "
              f"{r.source:<12} {','.join(r.labels)}")
        found = store.imported(r.name, r.version, where) if r.source != "biomed" else {}
        if found.get("checks"):
            c = found["checks"]
            print(f"{'':<16} imported from {found['source']['file']} (sha256 {found['source']['sha256'][:12]}); "
                  f"checks: {c['checker']}, max |diff| {c['max_abs_diff']:.1e} (rtol {c['rtol']}, atol {c['atol']}), "
                  f"batch {c.get('batch', 'any')}")
    return 0


def cmd_demo_models(args: argparse.Namespace) -> int:
    from training.demo.build import build_demo_models

    for tag in build_demo_models(Path(args.workdir), force=args.force, quick=args.quick):
        print(tag)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cli.serve import serve

    return serve(port=args.port, host=args.host, workers=args.workers, models=args.models, dicom_port=args.dicom_port,
                 grpc_port=args.grpc_port)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from training.args import add_arguments

    p = sub.add_parser("train", help="train an image or DNA model", description="Train with held-out splits, early stopping and a baseline.")
    add_arguments(p)
    p.set_defaults(func=cmd_train)


def build_parser(train: bool = True) -> argparse.ArgumentParser:
    """The whole command line. ``train=False`` leaves out the arguments of ``biomed train`` (they need torch to list
    the architectures), for every other command: they then start without importing torch."""
    from training.demo import DATASETS

    parser = _Parser(prog="biomed", description="Train, export and serve biomedical image, volume and DNA models.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo-data", help="write a synthetic demo data set")
    p.add_argument("kind", choices=list(DATASETS), help="which data set")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, help="number of images (600), series (volume: 440) or sequences (3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--motifs", default="CTCF,REST,TP53", help="DNA, genome: JASPAR names or matrix IDs to plant")
    p.add_argument("--length", type=int, help="DNA: sequence length (200); genome: bases per contig (20000)")
    p.add_argument("--contigs", type=int, default=2, help="genome: number of contigs (2)")
    p.add_argument("--variants", type=int, help="genome: neutral SNVs besides the motif-breaking ones (1 per 100 bases)")
    p.set_defaults(func=cmd_demo_data)

    if train:
        _add_train(sub)
    else:
        sub.add_parser("train", help="train an image or DNA model")

    p = sub.add_parser("export", help="export a run to verified ONNX in the model store",
                       description="Export a run's best model as one verified ONNX file into the model store and print "
                       "NAME:VERSION. Servers that follow NAME (nothing promoted) take the new version up as their "
                       f"default within {env('model_poll_s')}; a NAME holds one kind of model.")
    p.add_argument("run")
    p.add_argument("--name", required=True)
    p.add_argument("--quantize", choices=["int8"])
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--force", action="store_true", help="export even when the run's held-out AUROC is below its "
                   "baseline's (refused otherwise)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="list the models in the store; promote a version or give one a canary share",
                       description="biomed models [--json]: the store's models. biomed models promote NAME:VERSION: "
                       "make it the default of every server watching the store (NAME:latest: follow the newest "
                       "export). biomed models canary NAME:VERSION PERCENT: send that share of the requests for NAME "
                       "to it (0 ends it).")
    p.add_argument("action", nargs="?", choices=["list", "promote", "canary"], default="list")
    p.add_argument("ref", nargs="?", help="NAME:VERSION (promote, canary)")
    p.add_argument("percent", nargs="?", type=float, help="canary: the share of requests, 0 to 100")
    p.add_argument("--json", action="store_true")
    p.add_argument("--store", help=f"a model store folder (default: {env('model_store')}, else BentoML's store)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo-models", help="generate demo data, train and export demo-image, demo-dna and demo-volume")
    p.add_argument("--workdir", default="demo")
    p.add_argument("--force", action="store_true", help="rebuild even when the store has them")
    p.add_argument("--quick", action="store_true", help="tiny data and few epochs (tests)")
    p.set_defaults(func=cmd_demo_models)

    p = sub.add_parser("serve", help="serve the HTTP API (BentoML)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")),
                   help="HTTP port (default PORT or 3000)")
    p.add_argument("--host", default=os.environ.get(env("host"), "127.0.0.1"),
                   help=f"address to listen on (default {env('host')} or 127.0.0.1: this machine only; 0.0.0.0: every "
                   f"interface); the C-STORE receiver of --dicom-port too, unless {env('dicom_host')} is set")
    p.add_argument("--workers", type=int, help=f"worker processes (default {env('workers')} or 1)")
    p.add_argument("--models", help=f"comma list of name[:version] (default {env('models')} or demo-image,demo-dna,demo-volume)")
    p.add_argument("--dicom-port", type=int, help=f"also receive DICOM (C-STORE) on this port ({env('dicom_port')}; "
                   f"allowed senders in {env('dicom_allowed_aets')})")
    p.add_argument("--grpc-port", type=int, help=f"also serve the Open Inference Protocol v2 over gRPC on this port "
                   f"({env('grpc_port')})")
    p.set_defaults(func=cmd_serve)
    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Commands defined next to their implementation (analysis, benchmarks)."""
    found = []
    for module in ("cli.analysis", "cli.dna", "cli.image", "cli.variants", "cli.regions", "cli.importing"):
        found.append(__import__(module, fromlist=["register"]).register)
    from cli.bench import register

    return [*found, register]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(train=command == "train").parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, LookupError, FileNotFoundError, NotADirectoryError, RuntimeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"biomed: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
