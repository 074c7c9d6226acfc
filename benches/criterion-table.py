#!/usr/bin/env python3
"""Prints a markdown table of criterion results (median time per iteration and the
throughput it implies) from target/criterion/<group>/*/new/*.json.

    benches/criterion-table.py pipeline fdb_map
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def read(group):
    """(function id, elements per iteration, median ns, CI low ns, CI high ns) for each
    bench of `group`, sorted by directory."""
    rows = []
    for bench in sorted((ROOT / group).glob("**/new/benchmark.json")):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        elements = (meta.get("throughput") or {}).get("Elements", 1)
        ci = est["median"]["confidence_interval"]
        rows.append((meta["function_id"], elements, est["median"]["point_estimate"], ci["lower_bound"], ci["upper_bound"]))
    return rows


if __name__ == "__main__":
    for group in sys.argv[1:] or ["pipeline"]:
        print(f"| {group} | per element (median) | Melem/s (median) | 95% CI of median, Melem/s |")
        print("|---|---:|---:|---|")
        for name, elements, median, lo, hi in read(group):
            per = median / elements
            print(f"| {name} | {per:.1f} ns | {elements / median * 1e3:.2f} | {elements / hi * 1e3:.2f}–{elements / lo * 1e3:.2f} |")
        print()
