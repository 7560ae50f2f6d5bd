#!/usr/bin/env python3
"""The benchmark checkpoints of `cargo xtask bench <family>` without their weights, for the GPU
machine of `cargo xtask gpu-check` (its working tree may carry 64 MiB; a ~100M-parameter
checkpoint is 200-400 MB of random numbers that do not compress).

    bench_weights.py describe CHECKPOINT_DIR OUT_JSON
        Every tensor of CHECKPOINT_DIR/*.safetensors as its name, shape, dtype and how its values
        were drawn: a constant (layer-norm weights, biases), or mean / std plus the number of
        trailing all-zero rows (the vocabulary padding rows make_fixtures.py zeroes).
    bench_weights.py rebuild DESCRIPTION_JSON CHECKPOINT_DIR [--dtype bf16|f16|f32] [--device cuda]
        Writes the safetensors files back: constants as they were, the rest drawn from a seeded
        normal with the recorded mean and std, the zero rows kept, stored in --dtype (default:
        as described).

The rebuilt weights are not the original numbers, only the same names, shapes, scales and zero
rows: enough for a speed benchmark (both sides load the same file), not for parity."""

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}


def describe(ck: Path, out: Path) -> None:
    files = {}
    for f in sorted(ck.glob("*.safetensors")):
        tensors = {}
        with safe_open(f, framework="pt") as st:
            meta = st.metadata() or {}
            for name in st.keys():
                t = st.get_tensor(name)
                d = {"shape": list(t.shape), "dtype": NAMES.get(t.dtype, str(t.dtype))}
                x = t.float()
                if x.numel() > 0 and bool((x == x.flatten()[0]).all()):
                    d["const"] = float(x.flatten()[0])
                else:
                    if x.dim() == 2:
                        nonzero = (x != 0).any(dim=1).nonzero()
                        last = int(nonzero[-1]) + 1 if len(nonzero) else 0
                        d["zero_rows_tail"] = x.shape[0] - last
                        x = x[:last]
                    d["mean"], d["std"] = float(x.mean()), float(x.std())
                tensors[name] = d
        files[f.name] = {"metadata": meta, "tensors": tensors}
    out.write_text(json.dumps({"files": files}, indent=None, separators=(",", ":")) + "\n", encoding="utf-8")
    n = sum(len(v["tensors"]) for v in files.values())
    print(f"{out}: {n} tensors in {len(files)} files")


def rebuild(desc: Path, ck: Path, dtype: str | None, device: str) -> None:
    files = json.loads(desc.read_text())["files"]
    gen = torch.Generator(device=device).manual_seed(0)
    total = 0
    for fname, spec in files.items():
        out = {}
        for name, d in spec["tensors"].items():
            want = DTYPES[dtype] if dtype else DTYPES.get(d["dtype"], torch.float32)
            if not torch.is_floating_point(torch.empty(0, dtype=want)):
                want = torch.float32
            shape = d["shape"]
            if "const" in d:
                t = torch.full(shape, d["const"], dtype=torch.float32, device=device)
            else:
                t = torch.randn(shape, generator=gen, dtype=torch.float32, device=device) * d["std"] + d["mean"]
                z = d.get("zero_rows_tail", 0)
                if z:
                    t[-z:] = 0
            out[name] = t.to(want).cpu().contiguous()
            total += out[name].numel()
        save_file(out, str(ck / fname), metadata=spec.get("metadata") or None)
    print(f"{ck}: {total / 1e6:.1f}M values written")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("describe")
    d.add_argument("checkpoint", type=Path)
    d.add_argument("out", type=Path)
    r = sub.add_parser("rebuild")
    r.add_argument("description", type=Path)
    r.add_argument("checkpoint", type=Path)
    r.add_argument("--dtype", choices=list(DTYPES))
    r.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.cmd == "describe":
        describe(a.checkpoint, a.out)
    else:
        rebuild(a.description, a.checkpoint, a.dtype, a.device)


if __name__ == "__main__":
    main()
