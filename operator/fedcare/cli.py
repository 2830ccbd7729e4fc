"""The ``fedcare`` command: hub operator, site agent, CRD generation, sandbox."""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from . import __version__


def _crds(args: argparse.Namespace) -> int:
    from .api import crd

    root = pathlib.Path(args.root).resolve()
    if args.action == "generate":
        written = crd.generate(root)
        for path in written:
            print(f"wrote {path.relative_to(root)}")
        print(f"{len(written)} file(s) updated; {len(crd.expected_files(root))} generated in all")
        return 0
    diffs = crd.check(root)
    if diffs:
        sys.stdout.write("\n".join(diffs))
        print(f"\n{len(diffs)} generated CRD file(s) are stale: run `fedcare crds generate` (or `make crds`) "
              "and commit the result.", file=sys.stderr)
        return 1
    print("CRDs are up to date with the models.")
    return 0


def _hub(args: argparse.Namespace) -> int:
    from .hub.main import run_hub

    from .hub.round_settings import round_config

    rounds = round_config(artifact_dir=args.artifact_dir, artifact_claim=args.artifact_claim, app=args.flower_app,
                          fleet_address=args.fleet_address, insecure=args.insecure_flower or None)
    return run_hub(liveness=args.liveness, kubeconfig=args.kubeconfig, namespaces=args.namespace, rounds=rounds)


def _agent(args: argparse.Namespace) -> int:
    from .site.main import run_agent

    return run_agent(site=args.site, hub_kubeconfig=args.hub_kubeconfig, liveness=args.liveness,
                     site_kubeconfig=args.site_kubeconfig, work_namespace=args.work_namespace,
                     insecure_flower=args.insecure_flower)


def _sandbox(args: argparse.Namespace) -> int:
    if args.action == "kubelet":
        from .sandbox.kubelet import main as kubelet_main

        return kubelet_main(args)
    from .sandbox.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedcare", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fedcare {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser("crds", help="generate or check the CRDs from the pydantic models")
    crds.add_argument("action", choices=["generate", "check"])
    crds.add_argument("--root", default=".", help="repository root (default: current directory)")
    crds.set_defaults(func=_crds)

    hub = sub.add_parser("hub", help="run the hub controllers (kopf)")
    hub.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL ('' = off)")
    hub.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, then ~/.kube/config)")
    hub.add_argument("--namespace", action="append", default=None,
                     help="watch only these namespaces for namespaced kinds (repeatable; default: all)")
    hub.add_argument("--artifact-dir", default=None, help="artifact store folder (env FEDCARE_ARTIFACT_DIR)")
    hub.add_argument("--artifact-claim", default=None, help="artifact store PVC (env FEDCARE_ARTIFACT_CLAIM)")
    hub.add_argument("--flower-app", default=None, help="Flower app folder submitted with flwr run")
    hub.add_argument("--fleet-address", default=None,
                     help="host:port sites dial for the SuperLink when they are separate clusters")
    hub.add_argument("--insecure-flower", action="store_true",
                     help="DEVELOPMENT ONLY: run Flower without TLS or SuperNode authentication")
    hub.set_defaults(func=_hub)

    agent = sub.add_parser("agent", help="run the site agent for one hospital")
    agent.add_argument("--site", required=True, help="the HospitalNode name of this site")
    agent.add_argument("--hub-kubeconfig", required=True, help="kubeconfig for the hub API (the site's identity)")
    agent.add_argument("--site-kubeconfig", default=None,
                       help="kubeconfig for the site cluster (default: in-cluster; '' = no site cluster)")
    agent.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL ('' = off)")
    agent.add_argument("--work-namespace", default="fedcare-training",
                       help="site cluster namespace for training pods (default: fedcare-training)")
    agent.add_argument("--insecure-flower", action="store_true",
                       help="DEVELOPMENT ONLY: join SuperLinks that run without TLS or SuperNode authentication")
    agent.set_defaults(func=_agent)

    sandbox = sub.add_parser("sandbox", help="the one-machine sandbox (emulated Kubernetes)")
    sandbox.add_argument("action", choices=["demo", "kubelet"],
                         help="demo: the narrated sandbox; kubelet: a process kubelet (a Node running pods as processes)")
    sandbox.add_argument("--sites", default="3", help="number of hospitals, or comma-separated site names")
    sandbox.add_argument("--rounds", type=int, default=3, help="server rounds of the demo's FederatedRound")
    sandbox.add_argument("--images", type=int, default=120, help="synthetic training images per hospital")
    sandbox.add_argument("--seconds", type=float, default=0,
                         help="keep the sandbox API up this long after the demo (for kubectl)")
    from .sandbox.kubelet_cli import add_arguments as add_kubelet_arguments

    add_kubelet_arguments(sandbox.add_argument_group("kubelet (fedcare sandbox kubelet --kubeconfig K --node NAME --dir D)"))
    sandbox.set_defaults(func=_sandbox)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
