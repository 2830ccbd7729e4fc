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
    return run_hub(liveness=args.liveness, kubeconfig=args.kubeconfig, namespaces=args.namespace,
                   metrics_address=args.metrics, rounds=rounds)


def _agent(args: argparse.Namespace) -> int:
    from .site.main import run_agent

    if args.hub_credential == "kubeconfig" and not args.hub_kubeconfig:
        print("fedcare agent: give --hub-kubeconfig PATH, or --hub-credential vault", file=sys.stderr)
        return 2
    from .site.privacy import PrivacyConfigError, SitePrivacy
    try:
        privacy = SitePrivacy(args.privacy_budget_epsilon, args.privacy_budget_delta, args.privacy_ledger_claim,
                              args.dataset_id)
    except PrivacyConfigError as err:
        print(f"fedcare agent: {err}", file=sys.stderr)
        return 2
    return run_agent(site=args.site, hub_kubeconfig=args.hub_kubeconfig, liveness=args.liveness,
                     site_kubeconfig=args.site_kubeconfig, metrics_address=args.metrics,
                     hub_credential=args.hub_credential, work_namespace=args.work_namespace,
                     insecure_flower=args.insecure_flower, privacy=privacy)


def _status(args: argparse.Namespace) -> int:
    import asyncio

    from .status_view import run

    try:
        return asyncio.run(run(kubeconfig=args.kubeconfig, context=args.context, output=args.output,
                               watch=args.watch, interval=args.interval))
    except KeyboardInterrupt:
        return 0


def _plot(args: argparse.Namespace) -> int:
    from .plot import main as plot_main

    return plot_main(args)


def _sandbox(args: argparse.Namespace) -> int:
    if args.action == "kubelet":
        from .sandbox.kubelet import main as kubelet_main

        return kubelet_main(args)
    if args.action == "cluster":
        from .sandbox import cluster

        if args.site:
            return cluster.run_with_sites(args.dir or ".cluster", args.site, args.port)
        return cluster.main(args.dir or ".cluster", args.port)
    from .sandbox.demo import main as demo_main

    return demo_main(args)


def _verify(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    # an s3:// artifact (or --release of one) is downloaded here; removed whatever happens
    work = tempfile.mkdtemp(prefix="fedcare-verify-")
    try:
        return _verify_in(args, pathlib.Path(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _verify_in(args: argparse.Namespace, work: pathlib.Path) -> int:
    import asyncio
    import concurrent.futures
    import hashlib

    # Hash the artifact on a thread from the start (hashlib releases the GIL): the imports and
    # the chain reads below overlap with it, so the command takes about as long as the hash.
    pool = concurrent.futures.ThreadPoolExecutor(1)
    sha = None
    if args.artifact and not args.release and pathlib.Path(args.artifact).is_file():
        def digest(path: str) -> str:
            with open(path, "rb", buffering=0) as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest()
        sha = pool.submit(digest, args.artifact)

    from .release import verify as v

    common = {"rpc": args.rpc, "contract": args.contract, "chain_id": args.chain_id,
              "confirmations": args.confirmations, "site": args.site}
    if args.release:
        pem = pathlib.Path(args.public_key).read_text() if args.public_key else None
        inputs, rows = asyncio.run(v.inputs_from_release(args.kubeconfig, args.namespace, args.release,
                                                         public_key_pem=pem, workdir=work, **common))
    elif args.artifact:
        opt = lambda x: pathlib.Path(x) if x else None  # noqa: E731
        if args.artifact.startswith("s3://"):      # downloaded with its siblings (AWS_* variables)
            from .release.artifact import ArtifactError
            try:
                args.artifact, sha = asyncio.run(v.fetch_s3(args.artifact, work))
            except ArtifactError as err:
                print(f"fedcare verify: {err}", file=sys.stderr)
                return 1
        inputs, rows = v.inputs_from_files(pathlib.Path(args.artifact), manifest=opt(args.manifest),
                                           provenance=opt(args.provenance), proofs=opt(args.proofs),
                                           public_key=opt(args.public_key), sha256=sha, **common)
    else:
        print("fedcare verify: give an artifact file or --release NAME", file=sys.stderr)
        return 2
    rows += asyncio.run(v.check(inputs))
    pool.shutdown()
    return v.render(rows)


def _chain(args: argparse.Namespace) -> int:
    import asyncio

    from .integrations.chain import ChainClient, ChainError, ChainSettings
    from .integrations.keyref import KeyRefError, parse_key_ref

    async def deploy() -> tuple[str, str]:
        vault = None
        if args.key_ref.startswith("vault:"):
            from .integrations.secrets_backend import vault_from_env
            vault = vault_from_env()          # FEDCARE_VAULT_ADDR / token, as for the hub
        async with ChainClient(ChainSettings(args.rpc, args.chain_id, confirmations=args.confirmations),
                               parse_key_ref(args.key_ref, vault)) as client:
            return await client.deploy()

    try:
        address, tx = asyncio.run(deploy())
    except (ChainError, KeyRefError, ValueError) as err:
        print(f"fedcare chain deploy: {err}", file=sys.stderr)
        return 1
    print(address)
    print(f"deployed ModelRegistry at {address} on chain {args.chain_id} (tx {tx}); set it as the chain "
          "contract address (Helm: chain.contractAddress)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedcare", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fedcare {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="text (default) or json: one JSON object per line, for log pipelines")
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
    hub.add_argument("--metrics", default=metrics_default(), type=metrics_address,
                     help="Prometheus /metrics address HOST:PORT (default %(default)s; '' = off)")
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
    agent.add_argument("--hub-kubeconfig", default="", help="kubeconfig for the hub API (the site's identity)")
    agent.add_argument("--hub-credential", choices=["kubeconfig", "vault"], default="kubeconfig",
                       help="vault: the short-lived hub token the hub stores in Vault (read with the site's own "
                            "Vault identity, swapped before expiry) instead of --hub-kubeconfig")
    agent.add_argument("--site-kubeconfig", default=None,
                       help="kubeconfig for the site cluster (default: in-cluster; '' = no site cluster)")
    agent.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL ('' = off)")
    agent.add_argument("--metrics", default=metrics_default(), type=metrics_address,
                       help="Prometheus /metrics address HOST:PORT (default %(default)s; '' = off)")
    agent.add_argument("--work-namespace", default="fedcare-training",
                       help="site cluster namespace for training pods (default: fedcare-training)")
    agent.add_argument("--insecure-flower", action="store_true",
                       help="DEVELOPMENT ONLY: join SuperLinks that run without TLS or SuperNode authentication")
    # The hospital's own privacy settings (site/privacy.py): never taken from a round.
    agent.add_argument("--privacy-ledger-claim", default="",
                       help="PersistentVolumeClaim (work namespace) holding the site's privacy ledger; DP rounds "
                            "need it")
    agent.add_argument("--privacy-budget-epsilon", type=float, default=0.0,
                       help="the dataset's privacy budget epsilon, recorded in the ledger on first use (0 = keep "
                            "the ledger's)")
    agent.add_argument("--privacy-budget-delta", type=float, default=1e-5, help="the budget's delta")
    agent.add_argument("--dataset-id", default="", help="the ledger's dataset id (default: the site name)")
    agent.set_defaults(func=_agent)

    status = sub.add_parser("status", help="the federation at a glance: sites, rounds, releases")
    status.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, then ~/.kube/config)")
    status.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table", help="table (default) or json")
    status.add_argument("-w", "--watch", action="store_true", help="refresh until interrupted")
    status.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes with --watch")
    status.set_defaults(func=_status)

    plot = sub.add_parser("plot", help="write a PNG of one FederatedRound's progress and per-site metrics")
    plot.add_argument("round", help="the FederatedRound name")
    plot.add_argument("-n", "--namespace", default="default", help="its namespace (default: default)")
    plot.add_argument("-o", "--output", default=None, help="PNG path (default: ROUND.png)")
    plot.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, then ~/.kube/config)")
    plot.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    plot.set_defaults(func=_plot)

    sandbox = sub.add_parser("sandbox", help="the one-machine sandbox: the demo (emulated Kubernetes), a "
                                              "real Kubernetes control plane (cluster), or a process kubelet")
    sandbox.add_argument("action", choices=["demo", "cluster", "kubelet"],
                         help="demo: the narrated demo; cluster: run etcd, kube-apiserver, controller-manager "
                              "and scheduler in the foreground (needs `make kube`), Ctrl-C or SIGTERM stops them; "
                              "kubelet: a process kubelet (a Node running pods as processes)")
    sandbox.add_argument("--dir", default=None,
                         help="cluster: state folder (etcd data, certificates, logs, kubeconfig; default .cluster); "
                              "kubelet: folder for pod logs, volumes and homes (required)")
    sandbox.add_argument("--port", type=int, default=0, help="cluster: API server port on 127.0.0.1 (0: a free one)")
    sandbox.add_argument("--site", action="append", default=[],
                         help="cluster: also run the hub and enroll this site with its agent (repeatable)")
    sandbox.add_argument("--sites", default="3", help="demo: number of hospitals, or comma-separated site names")
    sandbox.add_argument("--rounds", type=int, default=3, help="demo: server rounds of the demo's FederatedRound")
    sandbox.add_argument("--images", type=int, default=120, help="demo: synthetic training images per hospital")
    sandbox.add_argument("--seconds", type=float, default=0,
                         help="keep the sandbox API up this long after the demo (for kubectl)")
    from .sandbox.kubelet_cli import add_arguments as add_kubelet_arguments

    add_kubelet_arguments(sandbox.add_argument_group("kubelet (fedcare sandbox kubelet --kubeconfig K --node NAME --dir D)"),
                          with_dir=False)
    sandbox.set_defaults(func=_sandbox)
    verify = sub.add_parser("verify", help="prove a released model: hash, signature, chain record, site proofs")
    verify.add_argument("artifact", nargs="?", help="the model file or s3://bucket/key (endpoint and credentials: "
                        "AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) (release.json, provenance.json and "
                                                    "provenance-proofs.json are read from beside it)")
    verify.add_argument("--release", help="verify a ModelRelease by name instead (needs a kubeconfig)")
    verify.add_argument("--namespace", default="default", help="namespace of --release")
    verify.add_argument("--kubeconfig", default=None, help="kubeconfig for --release")
    verify.add_argument("--rpc", help="chain JSON-RPC URL")
    verify.add_argument("--contract", help="ModelRegistry address")
    verify.add_argument("--chain-id", type=int, default=None, help="expected chain id (default: the release's)")
    verify.add_argument("--confirmations", type=int, default=1, help="confirmations required")
    verify.add_argument("--public-key", help="PEM of the release signing key (exported from Vault transit)")
    verify.add_argument("--manifest", help="release.json (default: beside the artifact)")
    verify.add_argument("--provenance", help="provenance.json (default: beside the artifact)")
    verify.add_argument("--proofs", help="provenance-proofs.json (default: beside the artifact)")
    verify.add_argument("--site", help="check only this site's contribution proofs")
    verify.set_defaults(func=_verify)

    chain = sub.add_parser("chain", help="ModelRegistry contract operations")
    chain.add_argument("action", choices=["deploy"])
    chain.add_argument("--rpc", required=True, help="chain JSON-RPC URL")
    chain.add_argument("--chain-id", type=int, required=True, help="expected chain id (checked against the node)")
    chain.add_argument("--key-ref", required=True, help="sending key reference: env:VAR, file:/path or "
                       "vault:<kv mount>/<path>#<field> (with FEDCARE_VAULT_ADDR)")
    chain.add_argument("--confirmations", type=int, default=1, help="confirmations to wait for")
    chain.set_defaults(func=_chain)
    return parser


def metrics_default() -> str:
    from .metrics import DEFAULT_ADDRESS

    return DEFAULT_ADDRESS


def metrics_address(value: str) -> str:
    from .metrics import parse_address

    if value:
        try:
            parse_address(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .logformat import configure_logging

    configure_logging(level=logging.DEBUG if args.verbose else logging.INFO, fmt=args.log_format)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
