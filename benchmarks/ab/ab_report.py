#!/usr/bin/env python3
"""Table for benchmarks/ab/ab.sh: ab_report.py RESULTS_DIR (with old-pN/, new-pN/)."""
from __future__ import annotations

import json
import os
import statistics
import sys


def rps(path):
    """(lb, conns) -> req/s of the measured throughput runs in one harness run."""
    out = {}
    for line in open(os.path.join(path, "runs.jsonl")):
        r = json.loads(line)
        if r.get("kind") == "wrk" and r.get("phase") == "throughput" and "rps" in r and not r.get("discarded"):
            out[(r["lb"].split("-")[0], r["conns"])] = (r["rps"], r["cpu"]["foreign_cpu_pct"])
    return out


def main() -> None:
    root = sys.argv[1]
    pairs = sorted({int(d.split("-p")[1]) for d in os.listdir(root) if "-p" in d})
    revs = open(os.path.join(root, "revs.txt")).read().strip()
    print(f"{revs}\n")
    print("| pair | conns | old req/s | new req/s | new/old | aiohttp (old run, new run) | "
          "new/old vs aiohttp | foreign % (old, new) |")
    print("|---|---|---:|---:|---:|---|---:|---|")
    ratios, norm, vals = {}, {}, {}
    for p in pairs:
        o, n = rps(os.path.join(root, f"old-p{p}")), rps(os.path.join(root, f"new-p{p}"))
        for c in (16, 64):
            if ("heimdall", c) not in o or ("heimdall", c) not in n:
                continue
            (ho, fo), (hn, fn) = o[("heimdall", c)], n[("heimdall", c)]
            ao, an = o[("aiohttp", c)][0], n[("aiohttp", c)][0]
            ratios.setdefault(c, []).append(hn / ho)
            norm.setdefault(c, []).append((hn / an) / (ho / ao))
            vals.setdefault(c, ([], []))
            vals[c][0].append(ho)
            vals[c][1].append(hn)
            print(f"| {p} | {c} | {ho:.0f} | {hn:.0f} | {hn / ho:.3f} | {ao:.0f}, {an:.0f} | "
                  f"{(hn / an) / (ho / ao):.3f} | {fo:.0f}, {fn:.0f} |")
    print("\n| conns | median old req/s | median new req/s | median new/old (per pair) | "
          "median new/old normalized by aiohttp |")
    print("|---|---:|---:|---:|---:|")
    for c in sorted(ratios):
        print(f"| {c} | {statistics.median(vals[c][0]):.0f} | {statistics.median(vals[c][1]):.0f} | "
              f"{statistics.median(ratios[c]):.3f} | {statistics.median(norm[c]):.3f} |")


if __name__ == "__main__":
    main()
