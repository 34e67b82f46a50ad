"""The `loraplex` command: one entry per deployable, plus `crds` and `dev`.

Each subcommand parses its own flags and hands off to the module that does the
work; nothing here decides anything.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loraplex.api.release import __version__

Handler = Callable[[argparse.Namespace], int]


def _operator(args: argparse.Namespace) -> int:
    import dataclasses

    from loraplex.operator.main import run
    from loraplex.operator.settings import OperatorSettings, SettingsError

    try:
        settings = OperatorSettings.from_env()
    except SettingsError as error:
        print(f"loraplex operator: {error}", file=sys.stderr)
        return 2
    overrides = {
        "namespaces": tuple(args.namespace) if args.namespace else None,
        "metrics_port": args.metrics_port,
        "health_port": args.health_port,
        "peering_priority": args.priority,
    }
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    return run(settings)


def _trainer(args: argparse.Namespace) -> int:
    from loraplex.worker.trainer.main import run

    return run(args.config, threads=args.threads)


def _crds_generate(args: argparse.Namespace) -> int:
    from loraplex.api import crd, peering, reference
    from loraplex.operator import admission_policy

    files = [(crd.file_name(kind), crd.render(kind)) for kind in crd.KINDS]
    outputs = [
        (folder / name, text) for folder in (args.dir, args.chart_dir) if folder for name, text in files
    ]
    if args.dir:
        outputs.append((args.dir / peering.FILE_NAME, peering.render()))
    if args.chart_dir:  # the chart's admission policy template picks the served version at install
        outputs.append((args.chart_dir.parent / admission_policy.CHART_FILE, admission_policy.render()))
        # kopf's peering CRDs go in Helm's crds/ folder: installed where missing, never owned, changed
        # or deleted by a release, so another kopf operator's release can share them.
        outputs.append(
            (args.chart_dir.parent.parent / peering.CHART_FOLDER / peering.FILE_NAME, peering.render())
        )
    if args.docs:
        outputs.append((args.docs, reference.render()))
    stale = []
    for path, text in outputs:
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"Wrote {path}")
    if stale:
        print("Out of date (run `loraplex crds generate`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def _crds_print(_: argparse.Namespace) -> int:
    from loraplex.api import crd, peering

    sys.stdout.write("---\n".join([*(crd.render(kind) for kind in crd.KINDS), peering.render()]))
    return 0


def _dev(action: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        from loraplex.e2e import devcli

        return devcli.run(action, args)

    return run


def _add_command(commands: Any, name: str, module: str, *, help: str, description: str) -> None:
    """The subcommand `name`, its flags defined by `module.configure`. Each image installs only the
    extras of what it runs (the trainer image has no router or agent dependencies), so a command
    whose module cannot be imported here still parses, and says what to install when run."""
    parser = commands.add_parser(name, help=help, description=description)
    try:
        configure = importlib.import_module(module).configure
    except ModuleNotFoundError as error:
        parser.set_defaults(handler=_not_installed(name, error), takes_any_arguments=True)
        return
    configure(parser)


def _not_installed(name: str, error: ModuleNotFoundError) -> Handler:
    def run(_: argparse.Namespace) -> int:
        print(
            f"loraplex {name}: this installation lacks {error.name!r}, which it needs"
            " (pip install 'loraplex[serving]'; the control image has it)",
            file=sys.stderr,
        )
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplex", description="Kubernetes operator for adapter-aware LLM fleets."
    )
    parser.add_argument("--version", action="version", version=f"loraplex {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_command(
        commands,
        "router",
        "loraplex.router.main",
        help="Run the adapter-affinity OpenAI-compatible router of one BaseModel.",
        description="Run the router of one BaseModel (docs/router.md).",
    )
    _add_command(
        commands,
        "api-key",
        "loraplex.router.api_key_command",
        help="Make API keys for a router: the key once, and the hashed entry its Secret holds.",
        description="API keys for the router (docs/router.md, Authentication).",
    )
    _add_command(
        commands,
        "agent",
        "loraplex.worker.agent.main",
        help="Run the worker agent that fetches, caches and loads adapters into vLLM.",
        description="Run the worker agent beside vLLM (docs/agent.md).",
    )

    trainer = commands.add_parser(
        "trainer",
        help="Run the LoRA trainer: one or several adapters fine-tuned on one shared base model.",
        description="Run the LoRA trainer (docs/trainer.md). Progress goes to stdout as JSON lines.",
    )
    trainer.add_argument("--config", type=Path, required=True, help="Trainer config (YAML or JSON).")
    trainer.add_argument("--threads", type=int, help="torch CPU threads (overrides the config).")
    trainer.set_defaults(handler=_trainer)

    operator = commands.add_parser(
        "operator",
        help="Run the kopf operator that reconciles BaseModel, LoRAAdapter and TrainingJob.",
        description=(
            "Run the operator. Settings come from LORAPLEX_* environment variables (docs/operator.md); "
            "these flags override them."
        ),
    )
    operator.add_argument(
        "--namespace", action="append", help="Watch only this namespace (repeatable; default: all)."
    )
    operator.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default: 9090).")
    operator.add_argument("--health-port", type=int, help="Liveness /healthz port (default: 8081).")
    operator.add_argument(
        "--priority",
        type=int,
        help="Peering priority; the highest of several replicas acts (default: from pod name).",
    )
    operator.set_defaults(handler=_operator)

    crds = commands.add_parser(
        "crds", help="Generate or print the CustomResourceDefinitions (and the API reference)."
    )
    crds_commands = crds.add_subparsers(dest="crds_command", required=True, metavar="ACTION")
    generate = crds_commands.add_parser("generate", help="Write crds/*.yaml from the API models.")
    generate.add_argument("--dir", type=Path, default=Path("crds"), help="Output folder (default: crds).")
    generate.add_argument(
        "--chart-dir",
        type=Path,
        default=Path("charts/loraplex/files/crds"),
        help="Also write them into the Helm chart here (default: charts/loraplex/files/crds).",
    )
    generate.add_argument(
        "--docs",
        type=Path,
        default=Path("docs/api.md"),
        help="Also write the field reference here (default: docs/api.md).",
    )
    generate.add_argument("--check", action="store_true", help="Fail if the files differ; write nothing.")
    generate.set_defaults(handler=_crds_generate)
    crds_commands.add_parser("print", help="Print every CRD as one YAML stream.").set_defaults(
        handler=_crds_print
    )

    dev = commands.add_parser("dev", help="Run a local fleet on a real local control plane.")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True, metavar="ACTION")
    cluster = dev_commands.add_parser(
        "cluster", help="Manage the local control plane (kube-apiserver, etcd, scheduler, KWOK GPU nodes)."
    )
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    for action, help_text in (
        (
            "up",
            "Build the pinned binaries if needed, start the control plane, create GPU nodes"
            " and install the CRDs.",
        ),
        ("down", "Stop every process of the control plane and delete its state."),
        ("status", "Show whether the control plane runs, its kubeconfig and its nodes."),
        ("build", "Only build (or find in the cache) the pinned Kubernetes, etcd, KWOK and helm binaries."),
    ):
        sub = cluster_commands.add_parser(action, help=help_text, description=help_text)
        _add_cluster_flags(sub, action)
        sub.set_defaults(handler=_dev(f"cluster-{action}"))
    for action, help_text in (
        (
            "up",
            "Start the local fleet: control plane, this machine as a real node running the images,"
            " the chart (CRDs, operator); --simulated: simulated GPU nodes with host processes behind.",
        ),
        ("down", "Stop the local fleet."),
    ):
        sub = dev_commands.add_parser(action, help=help_text, description=help_text)
        _add_cluster_flags(sub, action)
        if action == "up":
            sub.add_argument(
                "--simulated",
                action="store_true",
                help="Simulated GPU nodes (KWOK) with real vLLM, agent and router processes on this machine"
                " behind their pods, and the operator as a host process (no images, no kubelet).",
            )
            sub.add_argument(
                "--prometheus",
                action="store_true",
                help="Also start Debian's Prometheus on this machine, scraping every loraplex process as"
                " the chart's PodMonitor and ServiceMonitor select them (docs/local-cluster.md).",
            )
            sub.add_argument(
                "--no-workers",
                action="store_true",
                help="Do not start real vLLM, agent and router processes behind the simulated pods.",
            )
        sub.set_defaults(handler=_dev(action))
    return parser


def _add_cluster_flags(parser: argparse.ArgumentParser, action: str) -> None:
    parser.add_argument("--name", default="loraplex", help="Cluster name (default: loraplex).")
    if action == "up":
        parser.add_argument(
            "--nodes",
            type=int,
            default=None,
            help="Simulated GPU nodes (default: 4; `dev up` makes them only with --simulated).",
        )
        parser.add_argument(
            "--gpus-per-node",
            type=int,
            default=8,
            help="nvidia.com/gpu per node, real or simulated (default: 8).",
        )
        parser.add_argument(
            "--kind",
            action="store_true",
            help="Use kind (needs a working Docker engine) instead of local binaries.",
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
