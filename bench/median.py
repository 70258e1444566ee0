#!/usr/bin/env python3
"""Medians of roomhub-bench JSON lines: `median.py NAME FILE.jsonl`.

Prints one markdown table row of medians (or, for the `max` scenario, one
row per rate), ready for BENCHMARKS.md."""
import json
import statistics
import sys


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, prefix + k + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
            out[prefix + k] = v
    return out


def med(rows, key):
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else None


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.{digits}f}"
    return f"{int(v)}"


name, path = sys.argv[1], sys.argv[2]
runs = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
if not runs:
    sys.exit(f"{path}: no runs")
rows = [flat(r) for r in runs]
mode = runs[0]["mode"]
print(f"\n{name}: median of {len(rows)} run(s)")
if name == "max":
    print("| rate/sender | offered/s | delivered/s | ratio | p50 ms | p99 ms | server CPU | generator CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        offered = r["rate_per_sender"] * r["senders"] * (r["connections"] / r["rooms"] - 1)
        print(f"| {fmt(r['rate_per_sender'])} | {fmt(offered)} | {fmt(r['deliveries_per_sec'])} | "
              f"{r['delivery_ratio']:.4f} | {fmt(r['latency_ms.p50'])} | {fmt(r['latency_ms.p99'])} | "
              f"{fmt(r.get('server_cpu'))} | {fmt(r.get('generator_cpu'))} |")
elif mode == "throughput":
    print("| deliveries/s | ratio | p50 ms | p90 ms | p99 ms | max ms | server CPU | us/delivery | join s | generator CPU | frames/write | hub share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {fmt(med(rows, 'deliveries_per_sec'), 0)} | {med(rows, 'delivery_ratio'):.4f} | "
          f"{fmt(med(rows, 'latency_ms.p50'))} | {fmt(med(rows, 'latency_ms.p90'))} | "
          f"{fmt(med(rows, 'latency_ms.p99'))} | {fmt(med(rows, 'latency_ms.max'))} | "
          f"{fmt(med(rows, 'server_cpu'))} | {fmt(med(rows, 'server_us_per_delivery'))} | "
          f"{fmt(med(rows, 'join_secs'))} | {fmt(med(rows, 'generator_cpu'))} | "
          f"{fmt(med(rows, 'server_frames_per_write'))} | {fmt(med(rows, 'server_hub_share'), 3)} |")
elif mode == "idle":
    print("| connections | online | connect s | server RSS before MiB | after MiB | KiB/connection |")
    print("|---|---|---|---|---|---|")
    per = med(rows, "server_bytes_per_connection")
    print(f"| {fmt(med(rows, 'opened'))} | {fmt(med(rows, 'online'))} | {fmt(med(rows, 'connect_secs'))} | "
          f"{fmt(med(rows, 'server_rss_before_mb'), 1)} | {fmt(med(rows, 'server_rss_after_mb'), 1)} | "
          f"{fmt(per / 1024 if per is not None else None)} |")
elif mode == "storm":
    print("| members | recovered | wrong/failed | storm s | rejoin p50 ms | p99 ms | server CPU s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {fmt(med(rows, 'connections'))} | {fmt(med(rows, 'recovered'))} | "
          f"{fmt(med(rows, 'wrong_replays'))}/{fmt(med(rows, 'failures'))} | {fmt(med(rows, 'storm_secs'))} | "
          f"{fmt(med(rows, 'rejoin_ms.p50'))} | {fmt(med(rows, 'rejoin_ms.p99'))} | {fmt(med(rows, 'server_cpu_secs'))} |")
