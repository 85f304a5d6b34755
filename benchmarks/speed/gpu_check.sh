#!/usr/bin/env bash
# GPU check for cdred: one command for a person with a CUDA machine.
#
#   bash benchmarks/speed/gpu_check.sh WHEELS_DIR [OUT_DIR]
#
# WHEELS_DIR  a folder of wheels to install from, offline (pip install --no-index --find-links):
#             the CUDA build of torch 2.13.0 for your driver, every dependency of cdred, and either a
#             cdred wheel (`pip wheel --no-deps -w WHEELS_DIR .` in this repo) or setuptools>=68 and
#             wheel (then this checkout is installed). On a machine with internet access:
#               pip download -d WHEELS_DIR torch==2.13.0   # with your CUDA wheel index
#               pip download -d WHEELS_DIR . setuptools wheel && pip wheel --no-deps -w WHEELS_DIR .
# OUT_DIR     where results go (default: gpu-check-<date>); the venv is OUT_DIR/venv.
#
# SKIP_INSTALL=1 (WHEELS_DIR then unused, pass -): use $PYTHON as it is (torch with CUDA and cdred
# already importable, e.g. a cluster image); no venv is made.
#
# What it runs (MUJOCO_GL=egl, device cuda), eager PyTorch ("graphs off") and with the update and the
# MPPI plan captured as CUDA graphs ("graphs on", the default on CUDA):
#   1. pytest tests/test_cuda_graphs.py: graphed update and plan equal the eager ones;
#   2. benchmarks/speed/agent_speed.py --devices cuda --presets small paper: update ms, MPPI plan ms,
#      policy act ms and achieved/limit of the measured matmul rate (OUT_DIR/agent_speed*.json);
#   3. benchmarks/speed/train_loop_speed.py: the full training loop (env step + MPPI plan + update) on
#      dmc:cheetah-run with the paper preset, agent steps/s (OUT_DIR/train_loop_speed.jsonl);
#   4. benchmarks/speed/many_runs.py: 8 such training loops side by side on the one GPU (8 processes
#      of the project's executor, as `cdred sweep --workers 8` runs them): aggregate agent steps/s
#      against one run (OUT_DIR/many_runs.jsonl), and again under CUDA MPS where the daemon starts;
#   5. a short paper-preset training through the CLI, `cdred collect-experts dmc:cheetah-run --preset
#      paper --train-steps $TRAIN_STEPS --episodes 2 --device cuda --plan`;
# then prints one table. Override the training length with TRAIN_STEPS=... and the presets with
# PRESETS="tiny small paper". Needs Python 3.11, an NVIDIA driver and EGL (libegl1) for MuJoCo.
# Send OUT_DIR/gpu_check.txt (and the json files) back to the project.
set -euo pipefail

if [[ $# -lt 1 || ( "${SKIP_INSTALL:-0}" != 1 && ! -d "$1" ) ]]; then
    echo "usage: bash benchmarks/speed/gpu_check.sh WHEELS_DIR [OUT_DIR]   (WHEELS_DIR: a folder of wheels, see the top of this file)" >&2
    exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${2:-gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3.11}"
TRAIN_STEPS="${TRAIN_STEPS:-6000}"
PRESETS="${PRESETS:-small paper}"
export MUJOCO_GL=egl
export PYTHONUNBUFFERED=1

if [[ "${SKIP_INSTALL:-0}" == 1 ]]; then
    VPY="$PY"
else
    WHEELS="$(cd "$1" && pwd)"
    echo "== venv $OUT/venv (offline install from $WHEELS)"
    "$PY" -m venv "$OUT/venv"
    VPY="$OUT/venv/bin/python"
    PIP=("$VPY" -m pip install -q --no-index --find-links "$WHEELS")
    "${PIP[@]}" "torch==2.13.0"
    if compgen -G "$WHEELS/cdred-*.whl" > /dev/null; then
        "${PIP[@]}" cdred
    else
        "${PIP[@]}" "$REPO"
    fi
fi
CDRED=("$VPY" -P -c "import sys, cli; sys.argv[0] = 'cdred'; sys.exit(cli.main())")

echo "== CUDA"
"$VPY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("error: torch sees no CUDA device (torch %s, built for CUDA %s); install the CUDA build of torch 2.13.0"
             % (torch.__version__, torch.version.cuda))
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

echo "== CUDA-graph tests"
(cd "$REPO" && "$VPY" -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py 2>&1 | tail -5) || true

for G in on off; do
    echo "== agent speed (presets: $PRESETS, CUDA graphs $G)"
    # shellcheck disable=SC2086
    "$VPY" "$REPO/benchmarks/speed/agent_speed.py" --devices cuda --presets $PRESETS --cuda-graphs $G \
        --out "$OUT/agent_speed_graphs_$G.json" 2>&1 | tee -a "$OUT/agent_speed.log" || true
done

echo "== training loop: dmc:cheetah-run, paper preset, MPPI, cuda"
"$VPY" "$REPO/benchmarks/speed/train_loop_speed.py" --task dmc:cheetah-run --preset paper --device cuda --cuda-graphs on \
    --steps 3000 --seed-steps 500 --out "$OUT/train_loop_speed.jsonl" || true
"$VPY" "$REPO/benchmarks/speed/train_loop_speed.py" --task dmc:cheetah-run --preset paper --device cuda --cuda-graphs off \
    --steps 1500 --seed-steps 500 --out "$OUT/train_loop_speed.jsonl" || true

many_runs() {  # 1 and 8 paper-preset MPPI loops on dmc:cheetah-run, side by side on the GPU; extra args appended
    "$VPY" "$REPO/benchmarks/speed/many_runs.py" --runs 1 8 --task dmc:cheetah-run --preset paper --device cuda \
        --steps 1000 --seed-steps 300 --out "$OUT/many_runs.jsonl" "$@" || true
}
echo "== many runs on one GPU: 1 and 8 training loops side by side (dmc:cheetah-run, paper preset, MPPI)"
many_runs
if command -v nvidia-cuda-mps-control > /dev/null; then
    # Without MPS the GPU time-slices between processes (one process's kernels at a time); under MPS the
    # kernels of several processes run at once. The daemon is this script's own and is stopped after.
    echo "== the same under CUDA MPS"
    export CUDA_MPS_PIPE_DIRECTORY="$OUT/mps-pipe" CUDA_MPS_LOG_DIRECTORY="$OUT/mps-log"
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d; then
        many_runs --label mps
        echo quit | nvidia-cuda-mps-control || true
    else
        echo "could not start the MPS daemon here; skipped"
    fi
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi

echo "== paper-preset training through the CLI: dmc:cheetah-run, $TRAIN_STEPS env steps, MPPI, cuda"
T0=$(date +%s)
"${CDRED[@]}" --workdir "$OUT/runs" collect-experts dmc:cheetah-run --preset paper \
    --train-steps "$TRAIN_STEPS" --episodes 2 --random-episodes 2 --device cuda --plan 2>&1 | tee "$OUT/train.log"
T1=$(date +%s)

"$VPY" - "$OUT" "$((T1 - T0))" <<'EOF' | tee "$OUT/gpu_check.txt"
import json, sys
from pathlib import Path

out, total_s = Path(sys.argv[1]), int(sys.argv[2])
speed = [r for g in ("on", "off") if (out / f"agent_speed_graphs_{g}.json").exists()
         for r in json.loads((out / f"agent_speed_graphs_{g}.json").read_text())["results"]]
loops = [json.loads(x) for x in (out / "train_loop_speed.jsonl").read_text().splitlines() if x.strip()] \
    if (out / "train_loop_speed.jsonl").exists() else []
many = [json.loads(x) for x in (out / "many_runs.jsonl").read_text().splitlines() if x.strip()] \
    if (out / "many_runs.jsonl").exists() else []
metrics = sorted((out / "runs" / "experts").glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
rows = [json.loads(x) for x in metrics[-1].read_text().splitlines() if x.strip()] if metrics else []
# steady training rate: consecutive train rows after seeding with no evaluation in between
steps = wall = 0.0
prev = None
for r in rows:
    if r.get("kind") != "train":
        prev = None  # an evaluation ran in this interval: leave it out
        continue
    if prev is not None and prev.get("update_step", 0) > 0:
        steps += r["agent_step"] - prev["agent_step"]
        wall += r["wall_s"] - prev["wall_s"]
    prev = r
rate = steps / wall if wall > 0 else float("nan")
env_steps = rows[-1]["env_step"] if rows else 0
print()
print(f"{'preset':<7} {'device':<7} {'graphs':<6} {'update ms':>10} {'plan ms':>9} {'act ms':>8} {'update/limit':>13} {'plan/limit':>11}  GPU")
nan = float("nan")
for r in speed:  # .get: agent_speed.json fields may grow; a missing one prints nan instead of failing
    ups = r.get("updates_per_s") or nan
    print(f"{r.get('preset', '?'):<7} {r.get('device', '?'):<7} {'on' if r.get('cuda_graphs') else 'off':<6} {1000 / ups:>10.2f} {r.get('plan_latency_ms', nan):>9.2f} "
          f"{r.get('policy_act_latency_ms', nan):>8.3f} {100 * r.get('update_achieved_fraction_of_matmul', nan):>12.1f}% "
          f"{100 * r.get('plan_achieved_fraction_of_matmul', nan):>10.1f}%  {r.get('device_name', '')}")
print()
for r in loops:
    print(f"training loop {r['task']} {r['preset']} graphs {'on ' if r['cuda_graphs'] else 'off'}: "
          f"{r['agent_steps_per_s']:.1f} agent steps/s ({r['env_steps_per_s']:.1f} env steps/s) over {r['timed_agent_steps']} steps")
for r in many:
    print(f"{r['runs']} run(s) side by side on one GPU{' under MPS' if r.get('label') == 'mps' else ''}: "
          f"{r['aggregate_agent_steps_per_s']:.1f} agent steps/s in all, "
          f"{r['speedup']:.2f}x one run (target >= 5x at 8)")
print()
print(f"CLI paper-preset training on dmc:cheetah-run (env step + MPPI plan + update): {rate:.1f} agent steps/s "
      f"({2 * rate:.1f} env steps/s) over {int(steps)} agent steps after seeding; "
      f"{env_steps} env steps in all, {total_s} s wall for the whole command (seeding, evaluations, collection included)")
print("target: >= 300 agent steps/s on an H100 (TD-MPC2's authors: ~90 on an RTX 3090 with compile); before: 103.1 "
      "with CUDA graphs, 120.9 with TF32 (H100, docs/performance.md); many runs: before 1.00x (one run at a time)")
EOF
echo "results: $OUT/gpu_check.txt, $OUT/agent_speed_graphs_*.json, $OUT/train_loop_speed.jsonl, $OUT/runs"
