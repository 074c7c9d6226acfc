#!/usr/bin/env python3
"""Prints a markdown table of criterion results (median time per iteration and the
throughput it implies) from target/criterion/<group>/*/new/*.json.

    benches/criterion-table.py pipeline fdb_map
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
for group in sys.argv[1:] or ["pipeline"]:
    rows = []
    for bench in sorted((root / group).glob("**/new/benchmark.json")):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        elements = (meta.get("throughput") or {}).get("Elements", 1)
        median_ns = est["median"]["point_estimate"]
        lo = est["median"]["confidence_interval"]["lower_bound"]
        hi = est["median"]["confidence_interval"]["upper_bound"]
        rows.append((meta["function_id"], elements, median_ns, lo, hi))
    print(f"| {group} | per element (median) | Melem/s (median) | 95% CI of median, Melem/s |")
    print("|---|---:|---:|---|")
    for name, elements, median, lo, hi in rows:
        per = median / elements
        print(f"| {name} | {per:.1f} ns | {elements / median * 1e3:.2f} | {elements / hi * 1e3:.2f}–{elements / lo * 1e3:.2f} |")
    print()
