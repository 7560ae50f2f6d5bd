#!/bin/bash
# The on-device half of `cargo xtask gpu-check`: runs on a machine with an NVIDIA GPU and no Rust
# toolchain, from the repository root, over binaries that `cargo xtask gpu-check --prepare` built
# (with the `cuda` feature) and staged in target/gpu-check, which travels as a carried path: one
# binary per family, bin/parity_<family>.xz (`parity_<family> bench ...` is the bench binary).
# Needs python3 with torch and transformers (and xz, or python3's lzma, to unpack the binaries).
#
#   (a) parity: every golden fixture of the three candle backends on CUDA, f32 (first-step logits
#       within the CPU tests' 1e-4, greedy tokens equal) then bf16 (greedy tokens equal);
#   (b) bench: the ~100M-parameter bench checkpoints (weights rebuilt here from their description,
#       in bf16) through our bench binaries and tests/fixtures/bench_<family>.py on the PyTorch this
#       machine has, bf16, batch 1 and 8, then the table.
#
# Runtime CUDA libraries come from this machine: the driver's libcuda.so.1 and the PyTorch wheel's
# nvidia/cu13/lib (cuBLAS, cuBLASLt, cuRAND, the runtime, NVRTC). Everything is written to $OUT
# (default target/gpu-check/out): gpu-check.log (all output), parity_<family>.txt, bench.jsonl,
# table.md. Exit status: 0 when every parity check passed and every bench ran, 1 when one failed,
# 3 when this machine cannot run it (no GPU, no staged binaries, a library missing).
#
# Knobs (for a dry run on a CPU machine: GPU_CHECK_DEVICE=cpu GPU_CHECK_NEW_TOKENS=4
# GPU_CHECK_BATCHES=1 GPU_CHECK_LIBS=<the stub folders>): GPU_CHECK_DEVICE (cuda), PYTHON (python3),
# GPU_CHECK_NEW_TOKENS (128), GPU_CHECK_BATCHES ("1 8"), GPU_CHECK_FAMILIES ("llava qwen2vl mllama"),
# GPU_CHECK_LIBS (extra library folders, searched first), GPU_CHECK_SKIP (parity or bench),
# GPU_CHECK_BIN (where the binaries are unpacked, /tmp/gpu-check-bin).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 3
STAGE=target/gpu-check
OUT=${OUT:-$STAGE/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PY=${PYTHON:-python3}
NEW_TOKENS=${GPU_CHECK_NEW_TOKENS:-128}
BATCHES=${GPU_CHECK_BATCHES:-1 8}
FAMILIES=${GPU_CHECK_FAMILIES:-llava qwen2vl mllama}
SKIP=${GPU_CHECK_SKIP:-}
PROMPT="What is the person in this picture about to do, and how could they do it more effectively?"
T0=$(date +%s)
say() { echo "== gpu-check [$(($(date +%s) - T0)) s]: $*"; }
cannot() { echo "gpu-check: cannot run here: $*"; exit 3; }

say "start $(date -u +%FT%TZ), device $DEVICE, $(cat $STAGE/STAGED.txt 2>/dev/null | head -1)"
BIN=${GPU_CHECK_BIN:-/tmp/gpu-check-bin}
mkdir -p "$BIN"
for f in $FAMILIES; do
  [ -f "$STAGE/bin/parity_$f.xz" ] \
    || cannot "no staged binaries in $STAGE/bin: run 'cargo xtask gpu-check --prepare' on a machine with Rust and carry $STAGE"
  if [ ! -x "$BIN/parity_$f" ] || [ "$STAGE/bin/parity_$f.xz" -nt "$BIN/parity_$f" ]; then
    { xz -dc "$STAGE/bin/parity_$f.xz" 2>/dev/null || "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$STAGE/bin/parity_$f.xz"; } > "$BIN/parity_$f" \
      && chmod +x "$BIN/parity_$f" || cannot "cannot unpack $STAGE/bin/parity_$f.xz into $BIN"
  fi
done
if [ "$DEVICE" != cpu ]; then
  command -v nvidia-smi >/dev/null || cannot "no nvidia-smi: this is not a machine with an NVIDIA GPU"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
    || cannot "nvidia-smi finds no GPU"
fi

# The runtime libraries: the wheel's nvidia/cu13/lib and the driver's folder.
# nvidia/cu13/lib first, then any other nvidia/*/lib (a package may keep its own folder).
CU13=$("$PY" - <<'EOF' 2>/dev/null
import glob, importlib.util, os
spec = importlib.util.find_spec("nvidia")
dirs = []
for base in (spec.submodule_search_locations if spec else []):
    dirs += [os.path.join(base, "cu13", "lib")] + sorted(glob.glob(os.path.join(base, "*", "lib")))
print(":".join(dict.fromkeys(d for d in dirs if os.path.isdir(d))))
EOF
)
LIBS=${GPU_CHECK_LIBS:-}
[ -n "$CU13" ] && LIBS=$LIBS${LIBS:+:}$CU13
# The driver's libcuda.so.1 is on the loader's default path, or in a container's nvidia folder.
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [ -d "$d" ] && LIBS=$LIBS${LIBS:+:}$d
done
# Only our binaries get this path: Python finds its own libraries (a foreign folder first on its
# path can load another libpython's modules).
RUNLIBS=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ours() { LD_LIBRARY_PATH=$RUNLIBS "$@"; }
say "torch's CUDA libraries: ${CU13:-not found}"
first=$(echo $FAMILIES | cut -d' ' -f1)
missing=$(ours ldd "$BIN/parity_$first" 2>&1 | grep 'not found')
[ -z "$missing" ] || cannot "libraries not found (LD_LIBRARY_PATH=$RUNLIBS):
$missing"
ours ldd "$BIN/parity_$first" | grep -E 'libcuda|libcublas|libcurand|libcudart|libnvrtc'
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "transformers", transformers.__version__)'

status=0
# (a) parity on the device, f32 then bf16.
if [ "$SKIP" != parity ]; then
  for f in $FAMILIES; do
    say "parity $f on $DEVICE (f32, bf16)"
    ours timeout 300 "$BIN/parity_$f" --fixtures tests/fixtures --device "$DEVICE" --dtype f32 --dtype bf16 \
      > "$OUT/parity_$f.txt" 2>&1
    rc=$?
    grep -E '^parity ' "$OUT/parity_$f.txt" || tail -20 "$OUT/parity_$f.txt"
    [ $rc -eq 0 ] || { echo "parity $f: exit $rc (tables in $OUT/parity_$f.txt)"; status=1; }
  done
fi

# (b) the benches, ours and transformers', bf16.
if [ "$SKIP" != bench ]; then
  : > "$OUT/bench.jsonl"
  for f in $FAMILIES; do
    ck=$STAGE/bench/$f/checkpoint
    case $f in
      llava) images="large.png wide.png square.png" ;;
      *) images="wide.png tall.png square.png" ;;
    esac
    imgs=()
    for i in $images; do imgs+=(--image "tests/fixtures/images/$i"); done
    say "bench $f: weights rebuilt in bf16"
    "$PY" xtask/gpu-check/bench_weights.py rebuild "$STAGE/bench/$f/weights.json" "$ck" --dtype bf16 \
      --device "$([ "$DEVICE" = cpu ] && echo cpu || echo cuda)" || { status=1; continue; }
    for b in $BATCHES; do
      common=("$ck" --prompt "$PROMPT" --batch "$b" --new-tokens "$NEW_TOKENS" --dtype bf16 --device "$DEVICE" "${imgs[@]}")
      say "bench $f batch $b: ours"
      line=$(ours timeout 240 "$BIN/parity_$f" bench "${common[@]}" | grep '^{' | tail -1)
      [ -n "$line" ] && echo "$f	$line" >> "$OUT/bench.jsonl" || { echo "bench_$f batch $b failed"; status=1; }
      echo "$line"
      say "bench $f batch $b: transformers"
      line=$(PYTHONPATH=$STAGE/py${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 timeout 240 \
        "$PY" "tests/fixtures/bench_$f.py" "${common[@]}" --threads "$(nproc)" | grep '^{' | tail -1)
      [ -n "$line" ] && echo "$f	$line" >> "$OUT/bench.jsonl" || { echo "bench_$f.py batch $b failed"; status=1; }
      echo "$line"
    done
    rm -f "$ck"/*.safetensors
  done
  gpu=$([ "$DEVICE" = cpu ] && echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" \
    || nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
  "$PY" xtask/gpu-check/table.py "$OUT/bench.jsonl" --device "$gpu" --new-tokens "$NEW_TOKENS" | tee "$OUT/table.md"
fi
say "done: $([ $status -eq 0 ] && echo 'every check passed' || echo 'a check FAILED, see above')"
exit $status
