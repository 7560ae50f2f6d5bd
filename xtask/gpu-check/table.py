#!/usr/bin/env python3
"""The table of `cargo xtask gpu-check`'s bench: reads bench.jsonl (one `family<TAB>json` line per
run, as xtask/gpu-check/gpu-check.sh writes it: our bench binaries' and the bench_<family>.py
scripts' JSON lines) and prints, per family, every run and the speed-ups of ours over
transformers'. Standard library only (it runs on the GPU machine's python3)."""

import argparse
import json
from collections import defaultdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("jsonl")
    ap.add_argument("--device", default="")
    ap.add_argument("--new-tokens", default="")
    a = ap.parse_args()
    runs = defaultdict(dict)  # family -> (batch, impl) -> line
    for raw in open(a.jsonl, encoding="utf-8"):
        if "\t" not in raw:
            continue
        family, line = raw.rstrip("\n").split("\t", 1)
        m = json.loads(line)
        runs[family][(m["batch"], "ours" if m["impl"] != "transformers" else "transformers")] = m
    print(f"\nbench on {a.device}, bf16, {a.new_tokens} new tokens, greedy\n")
    print("| family | batch | prompt tokens | impl | prefill s | decode tok/s | peak RSS MiB | peak GPU MiB |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for family, rows in runs.items():
        for key in sorted(rows):
            m = rows[key]
            gpu = f"{m['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in m else "-"
            print(f"| {family} | {m['batch']} | {m['prompt_tokens']} | {m['impl']} | {m['prefill_s']:.3f} | "
                  f"{m['decode_tok_s']:.1f} | {m['peak_rss_mib']:.0f} | {gpu} |")
    print("\n| family | batch | decode speed-up (ours / transformers) | prefill speed-up |")
    print("|---|---:|---:|---:|")
    for family, rows in runs.items():
        for b in sorted({k[0] for k in rows}):
            o, t = rows.get((b, "ours")), rows.get((b, "transformers"))
            if o and t:
                print(f"| {family} | {b} | {o['decode_tok_s'] / t['decode_tok_s']:.2f}x | "
                      f"{t['prefill_s'] / o['prefill_s']:.2f}x |")


if __name__ == "__main__":
    main()
