#!/usr/bin/env bash
# VLSBench on a Slurm cluster: a job array runs one shard per task, then a dependent job merges them.
#
#   sbatch examples/slurm-array.sh examples/qwen2vl.toml
#
# Each task evaluates every 4th selected item (the host reads SLURM_ARRAY_TASK_ID, _COUNT and
# _MIN) into <output_dir>/<run name>--shard-I-of-4; a requeued task resumes where it stopped. The
# merge job writes <output_dir>/<run name>, whose summary.json and <arch>_outputs.json are those of
# the run made in one go.
#SBATCH --job-name=vlsbench
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --requeue
#SBATCH --output=vlsbench-%A_%a.log
set -euo pipefail
manifest=$(realpath "${1:?usage: sbatch slurm-array.sh MANIFEST}")

if [ "$SLURM_ARRAY_TASK_ID" = "${SLURM_ARRAY_TASK_MIN:-0}" ]; then
    # The first task submits the merge, to start once every task of this array has succeeded.
    # The run's folder: [run] output_dir (default "outputs", relative to the manifest's folder) and
    # [run] name (default: the manifest's file stem).
    name=$(sed -n 's/^name *= *"\(.*\)".*/\1/p' "$manifest" | head -1)
    out=$(sed -n 's/^output_dir *= *"\(.*\)".*/\1/p' "$manifest" | head -1)
    shards="${out:-outputs}/${name:-$(basename "$manifest" .toml)}--shard-*-of-${SLURM_ARRAY_TASK_COUNT}"
    sbatch --dependency="afterok:${SLURM_ARRAY_JOB_ID}" --job-name=vlsbench-merge \
        --output="vlsbench-${SLURM_ARRAY_JOB_ID}-merge.log" \
        --wrap "cd '$(dirname "$manifest")' && vlsbench-host merge $shards"
fi
exec vlsbench-host run "$manifest" --no-progress
