#!/usr/bin/env bash
# The cluster entry point: one torchrun per node through srun; requeues itself after a preemption or a failure.
#   sbatch [sbatch options] slurm/pretrain.sh [hydra overrides]   (from the repository root)
#   bash slurm/pretrain.sh cluster=h100 [hydra overrides]          (submits itself with the profile's nodes/GPUs)
# USR1 (sent 120 s before the time limit, or by `scancel --signal=USR1 --batch JOB`) and TERM are forwarded to the
# trainer, which checkpoints and exits as preempted; the job then requeues itself. A failed attempt requeues itself
# while failures <= resilience.max_restarts, after a health check; failing nodes are excluded by continuing the run
# in a new job (Slurm cannot change a running job's node exclusions). Outcomes go to RUN/goodput/events.jsonl.
# Env: OLMO_TRAIN_REPO (default: the submit dir), OLMO_TRAIN_PYTHON, OLMO_TRAIN_ENTRY (default
# "-m olmo_train.train.app"), OLMO_NPROC_PER_NODE, OLMO_HEALTHCHECK_ARGS, OLMO_SBATCH_ARGS (self-submission).
#SBATCH --job-name=olmo-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail

REPO=${OLMO_TRAIN_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}
cd "$REPO" || exit 1
# Expandable segments: less fragmentation of the CUDA cache (the throughput benchmarks ran with it); a user's own
# setting wins.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
PY=${OLMO_TRAIN_PYTHON:-$REPO/.venv/bin/python}; [ -x "$PY" ] || PY=python3
jobctl() { "$PY" -m olmo_train.launch.slurm_job "$@"; }

cluster=cpu; run_dir=""
for arg in "$@"; do
  case $arg in cluster=*) cluster=${arg#cluster=} ;; run.dir=*) run_dir=${arg#run.dir=} ;; esac
done

if [ -z "${SLURM_JOB_ID:-}" ]; then      # not inside a job: submit this script with the profile's shape
  profile=$(jobctl profile --cluster "$cluster") || exit 1
  eval "$profile"
  opts=(--nodes="$PROFILE_NODES")
  [ "$PROFILE_GPUS_PER_NODE" -gt 0 ] && opts+=(--gres="gpu:$PROFILE_GPUS_PER_NODE")
  [ -n "$PROFILE_TIME_LIMIT" ] && opts+=(--time="$PROFILE_TIME_LIMIT")
  # shellcheck disable=SC2086  # word splitting of the profile's and the user's extra options is intended
  exec sbatch "${opts[@]}" $PROFILE_SBATCH ${OLMO_SBATCH_ARGS:-} "$REPO/slurm/pretrain.sh" "$@"
fi

if [ -z "$run_dir" ]; then               # every attempt must share one run directory
  run_dir=$REPO/runs/$SLURM_JOB_NAME-$SLURM_JOB_ID; set -- "$@" "run.dir=$run_dir"
fi
mkdir -p "$run_dir/slurm"
ATTEMPT=$SLURM_JOB_ID.${SLURM_RESTART_COUNT:-0}
NNODES=$SLURM_JOB_NUM_NODES
log() { echo "[pretrain.sh $(date +%T) attempt $ATTEMPT] $*"; }

# profile, processes per node, rendezvous (NodeAddr of the first node) and the job_start event: one Python call
start=$(jobctl job-start --run-dir "$run_dir" --cluster "$cluster") || { log "job-start failed"; exit 1; }
eval "$start"
common=(--run-dir "$run_dir" --hardware "$PROFILE_HARDWARE" --world-size "$WORLD_SIZE")
log "nodes $SLURM_JOB_NODELIST ($NNODES x $NPROC), rendezvous $MASTER_ADDR:$MASTER_PORT, run $run_dir"

healthcheck() {   # $1: tag; other args to olmo-healthcheck. Prints the failing nodes (empty when all pass)
  local tag=$1; shift
  # shellcheck disable=SC2086
  OLMO_HEALTH_REPORTS="$run_dir/slurm/health.$ATTEMPT.$tag.jsonl" \
    "$REPO/slurm/healthcheck.sh" --run-dir "$run_dir" ${OLMO_HEALTHCHECK_ARGS:-} "$@"
}
requeue_or_resubmit() {   # $1: action from job-end; $2: nodes to exclude; then the overrides
  case $1 in
    finish) log "finished"; exit 0 ;;
    stop) log "giving up"; exit 1 ;;
    resubmit) new=$(jobctl resubmit --run-dir "$run_dir" --script "$REPO/slurm/pretrain.sh" --exclude "$2" \
                -- "${@:3}") \
                && { log "continuing in job $new without $2"; exit 0; }
              log "resubmission failed"; exit 1 ;;
  esac
  log "requeueing"
  trap - USR1 TERM
  scontrol requeue "$SLURM_JOB_ID" && exit 0   # Slurm kills what is left of this attempt
  restarts=$(scontrol show job "$SLURM_JOB_ID" -o | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
  if [ "${restarts:-0}" -gt "${SLURM_RESTART_COUNT:-0}" ]; then   # a node failure or preemption requeued it
    log "Slurm has already requeued the job"; exit 0
  fi
  log "scontrol requeue failed (JobRequeue disabled?): continuing in a new job"
  jobctl resubmit --run-dir "$run_dir" --script "$REPO/slurm/pretrain.sh" --exclude "" -- "${@:3}"
  exit $?
}

# The pre-training health check runs beside the trainer's start-up (imports, process group: seconds of
# recovery time otherwise); processes started by this attempt are not strays. A failing node ends the step.
bad_file="$run_dir/slurm/bad.$ATTEMPT"
healthcheck pre --ignore-attempt "$ATTEMPT" >"$bad_file" &
health_pid=$!

signalled=0; srun_pid=""
forward() {   # the batch shell got $1: pass it to every process of the training step (torchrun ignores USR1)
  signalled=1; log "got SIG$1: forwarding to the trainer"
  scancel --signal="$1" "$SLURM_JOB_ID" 2>/dev/null || { [ -n "$srun_pid" ] && kill -s "$1" "$srun_pid"; }
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
read -r -a entry <<<"${OLMO_TRAIN_ENTRY:--m olmo_train.train.app}"
# shellcheck disable=SC2016  # $SLURM_NODEID is expanded per node, inside the task
srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 --label \
  bash -c 'trap "" USR1; py=$1; shift; exec "$py" -m torch.distributed.run --node-rank="$SLURM_NODEID" "$@"' \
  pretrain-node "$PY" --nnodes="$NNODES" --nproc-per-node="$NPROC" --max-restarts=0 --rdzv-backend=static \
  --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" --monitor-interval=0.2 "${entry[@]}" "$@" &
srun_pid=$!

wait_for() {      # waits for pid $1 through trapped signals; sets rc
  while :; do
    wait "$1"; rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$1" 2>/dev/null; then continue; fi
    if [ "$rc" -gt 128 ]; then wait "$1"; r=$?; [ "$r" = 127 ] || rc=$r; fi
    return 0
  done
}
wait_for "$health_pid"
bad=$(cat "$bad_file")
if [ -n "$bad" ]; then
  log "health check failed on $bad before training: stopping the step"
  kill -TERM "$srun_pid" 2>/dev/null; wait_for "$srun_pid"
  action=$(jobctl job-end "${common[@]}" --exit-code 0 --unhealthy --bad-nodes "$bad" -- "$@")
  requeue_or_resubmit "$action" "$bad" "$@"
fi
wait_for "$srun_pid"
log "training step ended with exit code $rc"

bad=""
if [ "$rc" != 0 ] && [ "$signalled" = 0 ]; then bad=$(healthcheck post); fi
flags=(); [ "$signalled" = 1 ] && flags+=(--signalled)
action=$(jobctl job-end "${common[@]}" --exit-code "$rc" "${flags[@]}" --bad-nodes "$bad" -- "$@")
requeue_or_resubmit "$action" "$bad" "$@"
