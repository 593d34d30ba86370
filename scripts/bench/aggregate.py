#!/usr/bin/env python3
"""Merge the JSON lines of several switchboard-bench processes into one.

Counts are summed, rates of concurrent processes are summed, latency percentiles are
recomputed from the merged histograms when the lines carry `latency_hist` (--export-hist),
otherwise the max of each percentile is taken (an upper bound). If a publisher line is
present (role "publish"), loss is recomputed exactly from its `published` count and the
subscribers' `subs_by_topic`.

usage: aggregate.py FILE... (or JSON lines on stdin)  → one JSON line on stdout
"""
import json
import sys

SUM = ["connections", "connect_ok", "connect_failed", "disconnects", "deliveries", "unique",
       "duplicates", "unparsable", "errors", "published", "responses_ok", "responses_failed",
       "receipts", "lost"]
RATE_SUM = ["deliveries_per_sec", "connect_rate", "publish_rate", "receipts_per_sec"]


def percentile_from_hist(pairs, q):
    total = sum(c for _, c in pairs)
    if total == 0:
        return None
    want = max(1, int(round(total * q / 100.0 + 0.4999999)))
    acc = 0
    for v, c in pairs:
        acc += c
        if acc >= want:
            return v
    return pairs[-1][0]


def merged_hist(lines, key):
    """The [value, count] pairs of `key` summed over `lines`, sorted by value."""
    hist = {}
    for l in lines:
        for v, c in l.get(key, []):
            hist[v] = hist.get(v, 0) + c
    return sorted(hist.items())


def merge(lines):
    subs = [l for l in lines if l.get("role") in ("subscribe", "run")]
    pubs = [l for l in lines if l.get("role") in ("publish", "run")]
    out = {"role": "aggregate", "processes": len(lines)}
    for k in SUM:
        vals = [l[k] for l in lines if isinstance(l.get(k), (int, float))]
        if vals:
            out[k] = sum(vals)
    for k in RATE_SUM:
        vals = [l[k] for l in lines if isinstance(l.get(k), (int, float))]
        if vals:
            out[k] = sum(vals)
    # latency
    have_hist = all("latency_hist" in l for l in subs) and subs
    if have_hist:
        pairs = merged_hist(subs, "latency_hist")
        out["latency_us"] = {
            "p50": percentile_from_hist(pairs, 50), "p90": percentile_from_hist(pairs, 90),
            "p99": percentile_from_hist(pairs, 99), "p999": percentile_from_hist(pairs, 99.9),
            "max": pairs[-1][0] if pairs else None, "count": sum(c for _, c in pairs), "merged": "histogram"}
    elif subs:
        lat = {}
        for q in ("p50", "p90", "p99", "p999", "max"):
            vals = [l["latency_us"][q] for l in subs if l.get("latency_us", {}).get(q) is not None]
            lat[q] = max(vals) if vals else None
        lat["merged"] = "max-of-processes"
        out["latency_us"] = lat
    # seq 0 alone (a lone publish before a run that goes on with --seq-start 1)
    first = merged_hist(subs, "first_latency_hist")
    if first:
        out["first_latency_us"] = {
            "p50": percentile_from_hist(first, 50), "p99": percentile_from_hist(first, 99),
            "max": first[-1][0], "count": sum(c for _, c in first)}
    for key in ("connect_latency_us", "receipt_latency_us", "response_latency_us"):
        vals = [l[key] for l in lines if key in l]
        if vals:
            out[key] = {q: max((v.get(q) or 0) for v in vals) for q in ("p50", "p99", "max")}
    # exact loss from the publisher count
    published = sum(l.get("published", 0) for l in lines if l.get("role") == "publish")
    if published and subs and all("subs_by_topic" in l for l in subs):
        k = len(subs[0]["subs_by_topic"])
        per_topic = [0] * k
        for l in subs:
            for i, n in enumerate(l["subs_by_topic"]):
                per_topic[i] += n
        expected = sum(n * (published // k + (1 if i < published % k else 0)) for i, n in enumerate(per_topic))
        out["expected"] = expected
        out["lost"] = max(0, expected - out.get("unique", 0))
        out["lost_basis"] = "exact"
    for key in ("server_rss_kb", "server_rss_kb_start", "server_rss_kb_ready"):
        vals = [l[key] for l in lines if isinstance(l.get(key), int) and l[key] >= 0]
        if vals:
            out[key] = max(vals)
    samples = []
    for l in lines:
        samples += l.get("error_samples", [])
    out["error_samples"] = samples[:5]
    return out


def main():
    lines = []
    sources = sys.argv[1:] or ["-"]
    for src in sources:
        f = sys.stdin if src == "-" else open(src)
        for raw in f:
            raw = raw.strip()
            if raw.startswith("{"):
                lines.append(json.loads(raw))
    print(json.dumps(merge(lines)))


if __name__ == "__main__":
    main()
