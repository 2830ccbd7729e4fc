"""``fedcare sandbox kubelet`` options (light: parsing the command line imports no client)."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "parse_label", "parse_taint"]


def parse_taint(text: str) -> dict[str, str]:
    """``key=value:Effect`` or ``key:Effect``."""
    head, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise argparse.ArgumentTypeError(f"taint {text!r}: expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
    key, _, value = head.partition("=")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r}: expected key=value")
    return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The kubelet's options (``fedcare sandbox kubelet``)."""
    parser.add_argument("--kubeconfig", help="kubeconfig of the API server (emulator or real)")
    parser.add_argument("--node", help="the Node name to register")
    parser.add_argument("--dir", help="folder for pod logs, volumes and homes")
    parser.add_argument("--gpus", type=int, default=0, help="simulated nvidia.com/gpu capacity (default 0)")
    parser.add_argument("--label", type=parse_label, action="append", default=[], help="node label k=v (repeatable)")
    parser.add_argument("--taint", type=parse_taint, action="append", default=[],
                        help="node taint key[=value]:Effect (repeatable)")
    parser.add_argument("--bind", choices=["auto", "yes", "no"], default="auto",
                        help="bind unscheduled pods (the emulator's scheduler stand-in); auto: only when no "
                             "kube-scheduler Lease exists")
