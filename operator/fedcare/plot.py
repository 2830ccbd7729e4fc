"""``fedcare plot ROUND``: a PNG of one FederatedRound's progress and per-site metrics.

Everything comes from status the API already holds: the round's ``status`` (server round
i/n, participants with their state and last server round) and its RoundAssignments' status
(each site's last server round, training examples and latest local metrics). No metric of a
site is invented: a site without a value is drawn without a bar and named as such.
matplotlib (extra ``plot``) renders it with the Agg backend, no display needed.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
from typing import Any

from .api.resources import API_VERSION, FEDERATED_ROUNDS, ROUND_ASSIGNMENTS
from .integrations.kube import Kube, KubeError, NotFound, Ref
from .status_view import POLICY

STATE_COLOURS = {"Succeeded": "#2e7d32", "Training": "#1565c0", "Running": "#1565c0", "Accepted": "#64b5f6",
                 "Connected": "#64b5f6", "Selected": "#b0bec5", "Failed": "#c62828", "Rejected": "#c62828",
                 "Unknown": "#f9a825"}


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def per_site(rnd: dict[str, Any], assignments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per site: state, last server round, examples, metrics (name → value)."""
    md = rnd["metadata"]
    rows: dict[str, dict[str, Any]] = {}
    for p in (rnd.get("status") or {}).get("participants") or []:
        rows[p.get("node", "")] = {"site": p.get("node", ""), "state": p.get("state", ""),
                                   "lastRound": p.get("lastRound", 0), "examples": None, "metrics": {}}
    for ra in assignments:
        spec, st = ra.get("spec") or {}, ra.get("status") or {}
        ref = spec.get("roundRef") or {}
        if ref.get("name") != md["name"] or ref.get("namespace", md.get("namespace")) != md.get("namespace"):
            continue
        row = rows.setdefault(spec.get("nodeName", ""), {"site": spec.get("nodeName", ""), "lastRound": 0,
                                                         "state": st.get("phase") or "Unanswered", "metrics": {}})
        row["lastRound"] = max(row.get("lastRound") or 0, st.get("lastServerRound") or 0)
        row["examples"] = st.get("numExamples")
        row["metrics"] = {m["name"]: v for m in st.get("metrics") or []
                          if (v := _float(m.get("value"))) is not None}
    return sorted(rows.values(), key=lambda r: r["site"])


def render_png(rnd: dict[str, Any], rows: list[dict[str, Any]], out: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md, st, spec = rnd["metadata"], rnd.get("status") or {}, rnd.get("spec") or {}
    names = sorted({k for r in rows for k in r["metrics"]})
    panels = 2 + len(names)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2), squeeze=False)
    axes = axes[0]
    total = spec.get("rounds") or 0
    fig.suptitle(f"FederatedRound {md.get('namespace')}/{md['name']}: phase {st.get('phase') or 'unknown'}, "
                 f"server round {st.get('currentRound', 0)}/{total}, {st.get('roundsCompleted', 0)} aggregated")
    sites = [r["site"] for r in rows]
    ax = axes[0]
    ax.set_title("last server round per site")
    if rows:
        ax.bar(sites, [r["lastRound"] or 0 for r in rows],
               color=[STATE_COLOURS.get(r["state"], "#90a4ae") for r in rows])
        for i, r in enumerate(rows):
            ax.annotate(r["state"], (i, (r["lastRound"] or 0)), ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, max(1, total))
    else:
        ax.text(0.5, 0.5, "no participants yet", ha="center", va="center", transform=ax.transAxes)
    ax = axes[1]
    ax.set_title("training examples per site")
    have = [r for r in rows if r.get("examples")]
    if have:
        ax.bar([r["site"] for r in have], [r["examples"] for r in have], color="#546e7a")
    else:
        ax.text(0.5, 0.5, "no site has reported examples yet", ha="center", va="center", transform=ax.transAxes)
    for ax, name in zip(axes[2:], names, strict=True):
        ax.set_title(f"{name} (latest, per site)")
        have = [r for r in rows if name in r["metrics"]]
        ax.bar([r["site"] for r in have], [r["metrics"][name] for r in have], color="#1565c0")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out


async def plot(kube: Kube, namespace: str, name: str, out: pathlib.Path) -> pathlib.Path:
    rnd = await kube.get(Ref(API_VERSION, FEDERATED_ROUNDS.plural, namespace, name))
    assignments = await kube.list(Ref(API_VERSION, ROUND_ASSIGNMENTS.plural))
    return render_png(rnd, per_site(rnd, assignments), out)


async def run(*, round_name: str, namespace: str, output: str | None, kubeconfig: str | None,
              context: str | None) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("fedcare plot needs matplotlib: pip install 'fedcare[plot]'", file=sys.stderr)
        return 2
    out = pathlib.Path(output or f"{round_name}.png")
    try:
        kube = await Kube.from_kubeconfig(kubeconfig, context=context, policy=POLICY)
    except Exception as err:  # noqa: BLE001 - kubeconfig problems come in many types
        print(f"fedcare plot: cannot load the kubeconfig {kubeconfig or '(default)'}: {err}", file=sys.stderr)
        return 2
    try:
        written = await plot(kube, namespace, round_name, out)
    except NotFound:
        print(f"fedcare plot: FederatedRound {namespace}/{round_name} not found (kubectl get federatedrounds -A)",
              file=sys.stderr)
        return 1
    except KubeError as err:
        print(f"fedcare plot: the API server did not answer: {err}", file=sys.stderr)
        return 1
    finally:
        await kube.close()
    print(f"wrote {written}")
    return 0


def main(args: Any) -> int:
    return asyncio.run(run(round_name=args.round, namespace=args.namespace, output=args.output,
                           kubeconfig=args.kubeconfig, context=args.context))
