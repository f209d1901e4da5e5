#!/usr/bin/env bash
# Participant level as a SLURM array job: one subject per task, under Apptainer.
#
#   N=$(find /data/bids -maxdepth 1 -name 'sub-*' -type d | wc -l)
#   sbatch --array=0-$((N - 1))%50 examples/slurm_participant.sh /data/bids /data/out
#
# Task i processes the i-th subject folder of BIDS_DIR in sorted order. Finished
# outputs are skipped on re-run, so a failed array task can simply be resubmitted.
#SBATCH --job-name=bids-amyloid-participant
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=01:00:00
#SBATCH --output=logs/%x_%A_%a.out
# Add "#SBATCH --gres=gpu:1" to run HD-BET on a GPU (then keep --nv below).
set -euo pipefail

BIDS_DIR=$(realpath "${1:?usage: slurm_participant.sh BIDS_DIR OUT_DIR}")
OUT_DIR=$(realpath -m "${2:?usage: slurm_participant.sh BIDS_DIR OUT_DIR}")
SIF=${SIF:-$HOME/containers/bids-amyloid_0.1.0.sif}
WORK=${SLURM_TMPDIR:-${TMPDIR:-/tmp}}/bids-amyloid-${SLURM_ARRAY_JOB_ID:-0}-${SLURM_ARRAY_TASK_ID:-0}

mapfile -t SUBJECTS < <(find "$BIDS_DIR" -maxdepth 1 -name 'sub-*' -type d -printf '%f\n' | sort)
TASK=${SLURM_ARRAY_TASK_ID:?run with sbatch --array}
if (( TASK >= ${#SUBJECTS[@]} )); then
    echo "array index $TASK: only ${#SUBJECTS[@]} subjects in $BIDS_DIR" >&2
    exit 64
fi
SUBJECT=${SUBJECTS[$TASK]}
mkdir -p "$OUT_DIR" "$WORK"
trap 'rm -rf "$WORK"' EXIT

# Validate the dataset once before submitting (e.g. with bids-validator-deno);
# each task then skips the validation, which would otherwise run N times.
apptainer run --nv --cleanenv \
    -B "$BIDS_DIR":/bids:ro -B "$OUT_DIR":/out -B "$WORK":/work \
    "$SIF" /bids /out participant \
    --participant-label "$SUBJECT" \
    --skip-bids-validation \
    -w /work \
    --nprocs 1 --omp-nthreads "${SLURM_CPUS_PER_TASK:-1}"
