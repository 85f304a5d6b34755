"""Agent speed per preset: parameters, updates/s, MPPI plan and policy-prior act latency, peak memory,
FLOPs per update / plan and the achieved fraction of the measured matmul rate.

    python benchmarks/speed/agent_speed.py                         # tiny, small, paper on cpu (+ cuda if present)
    python benchmarks/speed/agent_speed.py --presets small --threads 1 --update-iters 30

Each (preset, device) runs in its own child process so that peak memory is per preset. Results are
printed as a table and written to benchmarks/results/agent_speed.json (gitignored). Defaults: batch
256, horizon 3 (TD-MPC2's); state observations with dmc:cheetah-run's dims (17 obs, 6 actions) so
the parameter count is comparable to TD-MPC2's 5M model. ``--pixels`` uses 9x64x64 frames instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_ITERS = {"tiny": 50, "small": 20, "paper": 3}
# The small preset on one CPU thread with eager PyTorch and torch's own Mish (docs/performance.md),
# printed beside this run's figures; the target is 50% of the matmul rate.
BEFORE_CPU_SMALL = "eager, F.mish: 19 updates/s at batch 128 (23%), 8.3-12.7 at batch 256 (15-25%)"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def matmul_rate(device, n: int = 2048, reps: int = 10) -> float:
    """Measured fp32 matmul rate (FLOP/s) on ``device``: the practical limit used for 'achieved/limit'."""
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _setup(preset: str, device_name: str, args: argparse.Namespace):
    """The MPPI agent of the preset and a replay buffer of 8 random episodes of 500 steps."""
    import numpy as np
    import torch

    from cdred_pipeline.agent import AgentConfig, ReplayBuffer, TDMPC2Agent

    obs_shape = (9, 64, 64) if args.pixels else (args.obs_dim,)
    A = args.action_dim
    cfg = AgentConfig.preset(preset, batch_size=args.batch_size, horizon=args.horizon, plan=True, compile=args.compile)
    graphs = {"auto": None, "on": True, "off": False}[args.cuda_graphs]
    agent = TDMPC2Agent(cfg, obs_shape, A, device=device_name, cuda_graphs=graphs if device_name != "cpu" else False)
    if agent.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(agent.device)
    rng = np.random.default_rng(0)
    T = 500
    buf = ReplayBuffer(8 * (T + 1), obs_shape, A, agent.device, torch.uint8 if args.pixels else torch.float32)
    for _ in range(8):
        obs = (rng.integers(0, 256, (T + 1, *obs_shape), dtype=np.uint8) if args.pixels
               else rng.normal(size=(T + 1, *obs_shape)).astype(np.float32))
        buf.add_episode(obs, rng.uniform(-1, 1, (T, A)).astype(np.float32), rng.normal(size=T).astype(np.float32))
    return agent, buf


def _updates_per_s(agent, buf, preset: str, args: argparse.Namespace) -> tuple[float, int]:
    dev, cfg = agent.device, agent.cfg
    iters = args.update_iters or (50 if dev.type == "cuda" else DEFAULT_ITERS.get(preset, 10))
    for _ in range(5 if agent.cuda_graphs else 2):  # CUDA graphs: 3 eager warm-up updates, then the capture
        agent.update(buf.sample(cfg.batch_size, cfg.horizon))
    _sync(dev)
    t = time.perf_counter()
    for _ in range(iters):
        agent.update(buf.sample(cfg.batch_size, cfg.horizon))
    _sync(dev)
    return iters / (time.perf_counter() - t), iters


def _flops(agent, buf, o) -> tuple[float, float]:
    """FLOPs of one update and one plan, counted on an eager twin (a graph replay dispatches no
    operators to count)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cdred_pipeline.agent import TDMPC2Agent

    cfg = agent.cfg
    counted = agent if not agent.cuda_graphs else TDMPC2Agent(cfg, agent.obs_shape, agent.action_dim,
                                                                device=agent.device, cuda_graphs=False)
    with FlopCounterMode(display=False) as fc:
        counted.update(buf.sample(cfg.batch_size, cfg.horizon))
    update_flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        counted.act(o, t0=True, eval_mode=False)
    return update_flops, fc.get_total_flops()


def _latency_ms(fn, n: int, dev) -> float:
    """Median wall time of ``fn()`` over ``n`` calls (after one warm-up), in ms."""
    fn()
    out = []
    for _ in range(n):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        out.append(time.perf_counter() - t0)
    return 1000 * statistics.median(out)


def _policy_act(preset: str, device_name: str, o, action_dim: int, dev) -> tuple[float, float]:
    """FLOPs and latency of one policy-prior act."""
    from torch.utils.flop_counter import FlopCounterMode

    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent

    pi_agent = TDMPC2Agent(AgentConfig.preset(preset, plan=False), o.shape, action_dim, device=device_name)
    with FlopCounterMode(display=False) as fc:
        pi_agent.act(o, t0=True)
    return fc.get_total_flops(), _latency_ms(lambda: pi_agent.act(o, t0=False, eval_mode=False), 200, dev)


def child(preset: str, device_name: str, args: argparse.Namespace) -> dict:
    """Measure one (preset, device) in this process."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    rss_before = _rss_mb()
    agent, buf = _setup(preset, device_name, args)
    dev, cfg = agent.device, agent.cfg
    upd_s, iters = _updates_per_s(agent, buf, preset, args)
    o = buf.sample(1, 1)["obs"][0, 0].cpu().numpy()
    update_flops, plan_flops = _flops(agent, buf, o)
    for _ in range(3):  # CUDA graphs: 2 eager plans, then the capture
        agent.act(o, t0=False, eval_mode=False)
    plan_ms = _latency_ms(lambda: agent.act(o, t0=False, eval_mode=False), args.plan_iters, dev)
    act_flops, act_ms = _policy_act(preset, device_name, o, agent.action_dim, dev)
    rate = matmul_rate(dev)
    res = {
        "preset": preset, "device": str(dev), "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                                                              else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "cuda_graphs": agent.cuda_graphs, "compile": cfg.compile, "tf32": bool(args.tf32),
        "obs_shape": list(agent.obs_shape), "action_dim": agent.action_dim,
        "params_trainable": agent.num_params(), "params_without_reward_head": agent.num_params(include_reward=False),
        "batch_size": cfg.batch_size, "horizon": cfg.horizon, "updates_per_s": upd_s, "update_iters": iters,
        "mppi": {"num_samples": cfg.num_samples, "num_pi_trajs": cfg.num_pi_trajs, "num_elites": cfg.num_elites,
                 "iterations": cfg.iterations},
        "plan_latency_ms": plan_ms, "policy_act_latency_ms": act_ms,
        "update_gflop": update_flops / 1e9, "plan_gflop": plan_flops / 1e9, "policy_act_gflop": act_flops / 1e9,
        "matmul_gflops_measured": rate / 1e9,
        "update_achieved_gflops": update_flops * upd_s / 1e9,
        "update_achieved_fraction_of_matmul": update_flops * upd_s / rate,
        "plan_achieved_fraction_of_matmul": plan_flops / (plan_ms / 1000) / rate,
        "peak_rss_mb": _rss_mb(), "rss_before_agent_mb": rss_before,
    }
    if dev.type == "cuda":
        res["peak_cuda_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--horizon", type=int, default=3)
    p.add_argument("--obs-dim", type=int, default=17)
    p.add_argument("--action-dim", type=int, default=6)
    p.add_argument("--pixels", action="store_true", help="9x64x64 uint8 frames instead of state")
    p.add_argument("--update-iters", type=int, default=0, help="0: per-preset default (tiny 50, small 20, paper 3)")
    p.add_argument("--plan-iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--compile", action="store_true", help="torch.compile both losses (cfg.compile; agent/compiled.py)")
    p.add_argument("--tf32", action="store_true", help="CUDA: TF32 tensor-core matmuls (torch.set_float32_matmul_precision('high'))")
    p.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                   help="CUDA: capture update and plan as CUDA graphs (auto: on; 'off' measures eager PyTorch)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "agent_speed.json")
    p.add_argument("--child", nargs=2, metavar=("PRESET", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1], args)))
        return

    import torch

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    passthrough = [a for a in sys.argv[1:]]
    for device in devices:
        for preset in args.presets:
            cmd = [sys.executable, __file__, *passthrough, "--child", preset, device]
            r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if r.returncode != 0 or line is None:
                print(f"{preset}/{device}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
                continue
            res = json.loads(line[len("RESULT "):])
            results.append(res)
            print(
                f"{preset:6s} {res['device']:5s} graphs={'on ' if res['cuda_graphs'] else 'off'} "
                f"compile={'on ' if res['compile'] else 'off'} batch={res['batch_size']} thr={res['threads']} params={res['params_trainable']:>9,d} "
                f"(w/o reward {res['params_without_reward_head']:,d})  upd/s={res['updates_per_s']:7.2f}  "
                f"plan={res['plan_latency_ms']:8.2f} ms  act={res['policy_act_latency_ms']:6.3f} ms  "
                f"peak RSS={res['peak_rss_mb']:7.0f} MB" + (f" CUDA={res['peak_cuda_mem_mb']:.0f} MB" if "peak_cuda_mem_mb" in res else "")
                + f"  update {res['update_gflop']:.2f} GFLOP, plan {res['plan_gflop']:.3f} GFLOP, "
                f"matmul {res['matmul_gflops_measured']:.0f} GFLOP/s, update achieved "
                f"{res['update_achieved_gflops']:.1f} GFLOP/s = {100 * res['update_achieved_fraction_of_matmul']:.0f}%",
                flush=True,
            )
    if any(r["preset"] == "small" and r["device"] == "cpu" for r in results):
        print(f"before (small, cpu, 1 thread): {BEFORE_CPU_SMALL}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"host": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "argv": sys.argv[1:], "results": results}
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
