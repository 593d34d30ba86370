#!/usr/bin/env python3
"""Plots from a run-all results file (pip install matplotlib).

  scripts/bench/plot.py scripts/bench/results/<size>-<timestamp>.json docs/ [suffix]
writes docs/bench-latency.png (fan-out p50/p99 vs delivered rate, one line per server) and
docs/bench-rss.png (server RSS vs idle subscribed connections, one line per server).
Each point is the median over the repetitions.
"""
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"switchboard": "tab:blue", "switchboard-nagle": "tab:purple", "switchboard-nodelay": "tab:cyan", "nchan": "tab:green", "rabbitmq": "tab:orange"}


def med(v):
    v = [x for x in v if isinstance(x, (int, float))]
    return statistics.median(v) if v else None


def main():
    data = json.load(open(sys.argv[1]))
    outdir = sys.argv[2] if len(sys.argv) > 2 else "docs"
    suffix = sys.argv[3] if len(sys.argv) > 3 else ""
    res = data["results"]
    servers = data["servers"]

    if "b" in res:
        fig, ax = plt.subplots(figsize=(8, 5))
        for s in servers:
            by_rate = {}
            for rep in res["b"].get(s, []):
                for st in rep.get("steps", []) or []:
                    by_rate.setdefault(st["target_rate"], []).append(st)
            xs, p99, p50 = [], [], []
            for rate in sorted(by_rate):
                sts = by_rate[rate]
                xs.append(sts[0]["target_deliveries_per_sec"])
                p99.append(med([x["latency_us"]["p99"] for x in sts]) / 1000)
                p50.append(med([x["latency_us"]["p50"] for x in sts]) / 1000)
            if xs:
                ax.plot(xs, p99, "o-", color=COLORS.get(s), label=f"{s} p99")
                ax.plot(xs, p50, "s--", color=COLORS.get(s), alpha=0.6, label=f"{s} p50")
        ax.set_xlabel("offered deliveries/s = publish rate x 1,000 subscribers (one topic)")
        ax.set_ylabel("latency publish→subscriber (ms, log)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.axvline(100_000, color="grey", lw=0.8, ls=":")
        ax.set_title(f"Fan-out latency vs delivery rate ({data['size']}, median of {data['reps']})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, f"bench-latency{suffix}.png"), dpi=110)

    if "a" in res:
        fig, ax = plt.subplots(figsize=(8, 5))
        for s in servers:
            curves = [rep["curve"] for rep in res["a"].get(s, []) if isinstance(rep, dict) and rep.get("curve")]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            xs = [curves[0][i][0] for i in range(n)]
            ys = [med([c[i][1] for c in curves]) / 1024 for i in range(n)]
            ax.plot(xs, ys, "o-", color=COLORS.get(s), label=s)
        ax.set_xlabel("idle subscribed connections")
        ax.set_ylabel("server RSS (MiB)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"Server RSS vs connections ({data['size']}, median of {data['reps']})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, f"bench-rss{suffix}.png"), dpi=110)


if __name__ == "__main__":
    main()
