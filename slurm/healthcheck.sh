#!/usr/bin/env bash
# Health check of every node of the current allocation: one olmo-healthcheck per node through srun.
# usage (inside an allocation: sbatch, salloc, or from pretrain.sh):
#   slurm/healthcheck.sh [--run-dir RUN] [olmo-healthcheck options]
# Prints the comma-separated list of failing nodes on stdout (empty = all healthy), the per-node JSON reports on
# stderr (or into $OLMO_HEALTH_REPORTS when set), and exits 1 when any node failed or did not answer.
set -uo pipefail
REPO=${OLMO_TRAIN_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}
PY=${OLMO_TRAIN_PYTHON:-$REPO/.venv/bin/python}; [ -x "$PY" ] || PY=python3
: "${SLURM_JOB_ID:?slurm/healthcheck.sh runs inside a Slurm allocation (sbatch, salloc)}"
reports=${OLMO_HEALTH_REPORTS:-$(mktemp)}
# --overlap: runs beside a step that may still be tearing down; the timeout keeps a wedged node from hanging us
timeout "${OLMO_HEALTH_TIMEOUT_S:-120}" srun --overlap --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \
  --kill-on-bad-exit=0 "$PY" -m olmo_train.resilience.health "$@" >>"$reports" 2>/dev/null
bad=$(cd "$REPO" && "$PY" -m olmo_train.launch.slurm_job bad-nodes --reports "$reports" --nodelist "$SLURM_JOB_NODELIST")
[ -n "${OLMO_HEALTH_REPORTS:-}" ] || { cat "$reports" >&2; rm -f "$reports"; }
echo "$bad"
[ -z "$bad" ]
