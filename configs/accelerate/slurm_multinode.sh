#!/usr/bin/env bash
# Multi-node SPA run under Slurm: one task per node, each starting accelerate with this node's rank;
# all processes of all nodes form one data-parallel group. The run directory (run.output_dir) must be on
# a filesystem every node sees: the main process (node 0, local rank 0) writes it, the others read it.
#
#   sbatch configs/accelerate/slurm_multinode.sh recipes/base/spa_paper.yaml run.name=spa_2x8
#
#SBATCH --job-name=spa
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
# SIGTERM two minutes before the time limit, so the run stops at a step or shard boundary with a checkpoint
# (spa_recipes/interrupt.py) instead of being killed up to `checkpoint_every` steps after its last one. No "B:":
# that would signal the batch shell alone, which only waits on srun and would not pass it on; without it Slurm
# signals the processes of the srun step (the launchers, which forward it, and the training processes; the
# second copy a process gets within a second counts as the same request). 120 s covers a step and a checkpoint
# of a large model; the launcher kills its processes 30 s after forwarding, so keep a step well under that.
#SBATCH --signal=TERM@120
# Pre-emption (PreemptMode=REQUEUE) or a failed node puts the job back in the queue rather than ending it; the
# requeued job runs this same command, which resumes. After a time-limit stop, resubmit the same sbatch line
# (or `scontrol requeue <jobid>`).
#SBATCH --requeue
set -euo pipefail

RECIPE="$1"; shift
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
CONFIG="${ACCELERATE_CONFIG:-configs/accelerate/ddp.yaml}"
MAIN_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MAIN_PORT="${MAIN_PORT:-29500}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
# Barriers wait while the main process alone runs a stage (split, pairs, report): allow hours.
export SPA_RECIPES_DIST_TIMEOUT="${SPA_RECIPES_DIST_TIMEOUT:-14400}"

# srun starts one copy per node; SLURM_NODEID is that node's rank. Single quotes: expanded on each node.
srun --kill-on-bad-exit=1 bash -c '
  accelerate launch \
    --config_file "'"$CONFIG"'" \
    --num_machines "$SLURM_NNODES" \
    --machine_rank "$SLURM_NODEID" \
    --num_processes $(( SLURM_NNODES * '"$GPUS_PER_NODE"' )) \
    --main_process_ip "'"$MAIN_HOST"'" \
    --main_process_port "'"$MAIN_PORT"'" \
    --rdzv_backend c10d \
    -m spa_recipes run "$@"
' _ "$RECIPE" "$@"
# Re-submitting the same command resumes: finished stages are skipped, cut-off ones continue from their
# shards and checkpoints (a training checkpoint resumes only with the same total process count).
