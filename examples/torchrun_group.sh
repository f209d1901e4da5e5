#!/usr/bin/env bash
# Group level (teacher + student training) on the GPUs of one node with torchrun (DDP).
#
#   sbatch examples/torchrun_group.sh /data/bids /data/out            # SLURM, Apptainer
#   NGPUS=2 bash examples/torchrun_group.sh /data/bids /data/out      # any GPU machine
#
# Needs the participant level done for every subject. Only rank 0 writes outputs;
# every rank reads the slice caches under OUT_DIR.
#SBATCH --job-name=bids-amyloid-group
#SBATCH --nodes=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=32
#SBATCH --mem=128G
#SBATCH --time=06:00:00
#SBATCH --output=logs/%x_%j.out
set -euo pipefail

BIDS_DIR=$(realpath "${1:?usage: torchrun_group.sh BIDS_DIR OUT_DIR [RUN_NAME]}")
OUT_DIR=$(realpath "${2:?usage: torchrun_group.sh BIDS_DIR OUT_DIR [RUN_NAME]}")
RUN_NAME=${3:-default}
NGPUS=${NGPUS:-$(nvidia-smi --list-gpus | wc -l)}
SIF=${SIF:-$HOME/containers/bids-amyloid_0.1.0.sif}

# Outside a container, replace the first line by: torchrun --standalone ...
apptainer exec --nv --cleanenv -B "$BIDS_DIR":/bids:ro -B "$OUT_DIR":/out "$SIF" \
    torchrun --standalone --nproc-per-node "$NGPUS" -m bids_amyloid.cli \
    /bids /out group --stage all --run-name "$RUN_NAME" \
    --contrasts T1w --skip-bids-validation --device cuda
