"""``cdred sweep``: a grid of (task, method, seed) imitation runs with results a person can read and plot.

Each task's expert and demonstrations are made once (collect-experts with the pipeline preset's settings:
a scripted expert for Meta-World, TD-MPC2 otherwise, on ``expert_seed``) and shared by every method and
seed. Each (task, method, seed) is then one imitate run plus a final evaluation without tremble (and at
each ``--eval-tremble`` p), both cached artifacts, run as one executor unit. The outputs under
``<workdir>/sweeps/<name>/`` are rebuilt from the artifacts' manifests alone, so a killed sweep rerun
writes the same ``results.csv`` bytes as an uninterrupted one:

* ``results.csv``: one row per evaluation point of every run's learning curve and one final row per run;
* ``summary.md``: the command that reproduces the sweep, the setting, expert and random scores, final
  success and return per task and method (mean and 95% bootstrap CI over seeds), the interquartile mean
  (IQM) of the final normalised score across tasks with a stratified-bootstrap 95% CI (Agarwal et al.
  2021, as rliable computes it), and the failed runs;
* ``figures/<task>.png``: the learning curve of every method against env steps;
* with ``--eval-tremble``: ``tremble.csv`` (every run's final evaluation at each p), its table in the
  summary, and ``figures/tremble_<task>.png`` (final score against p, App. D.4).

A method is an entry of :data:`METHODS`: the ImitateConfig overrides that make it and the function that
runs one (task, seed) of it (default :func:`imitate_and_evaluate`), so baselines that are not reward
modes of the imitate stage can be registered beside them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.artifacts import Artifact, ArtifactStore, save_figure_atomic
from cdred_pipeline.errors import CdredError, NotMadeError, UsageError
from cdred_pipeline.logging_sinks import check_log_names
from cdred_pipeline.presets import PIPELINE_PRESETS
from cdred_pipeline.stages.common import DATASET_NAME

CSV_COLUMNS = ("task", "method", "seed", "point", "env_steps", "return", "success", "normalized_score",
               "episodes", "wall_time_s", "imitate_key", "eval_key")
#: Columns of tremble.csv: each run's final evaluation at every ``--eval-tremble`` p.
TREMBLE_COLUMNS = ("task", "method", "seed", "p", "return", "success", "normalized_score", "episodes", "eval_key")
#: Episodes of the final evaluation by pipeline preset; a preset not named here uses its own ``eval_episodes``.
FINAL_EVAL_EPISODES: dict[str, int] = {"cpu": 100, "paper": 100}
IQM_BOOTSTRAP_REPS = 10_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ------------------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Method:
    """A sweep method: the ImitateConfig fields that make it, the EvalConfig fields of its final evaluation
    and the module-level function that runs one (task, seed) of it (``None``: :func:`imitate_and_evaluate`).
    A runner returns the keys of the run's ``imitate`` artifact (learning curve in ``metrics.jsonl``) and
    ``eval`` artifact (final evaluation)."""

    imitate: Mapping[str, Any] = field(default_factory=dict)
    runner: Callable[["RunUnit"], dict[str, str]] | None = None
    description: str = ""
    evaluate: Mapping[str, Any] = field(default_factory=dict)


METHODS: dict[str, Method] = {
    "cdred": Method({"reward": "cdred", "method": "cdred"},
                    description="CDRED: coupled expert and behavioural predictors (Eq. 5)"),
    "red": Method({"reward": "red", "method": "red"},
                  description="RED: the expert predictor only (the paper's uncoupled ablation)"),
    "iqmpc": Method({"reward": "cdred", "method": "iqmpc"},
                    description="IQ-MPC: the world model's critic trained by the inverse soft-Q objective (Li et al. 2024)"),
    "bc": Method({"reward": "cdred", "method": "bc", "plan": False},
                 description="BC: encoder and policy prior fit to the demos' actions, no env interaction"),
    "cdred-plan": Method({"reward": "cdred", "method": "cdred", "plan": True},
                         description="CDRED acting with MPPI on the CDRED reward (Eq. 17) while it trains and "
                                     "when it is evaluated, whatever the preset's acting"),
    "cdred-rnd-init": Method({"reward": "cdred", "method": "cdred", "reward_init": "rnd"},
                             description="CDRED with the targets drawn as RND draws them (orthogonal, gain "
                                         "sqrt 2) and default-init predictors (an init ablation)"),
    "cdred-sigma5": Method({"reward": "cdred", "method": "cdred", "sigma": 5.0},
                           description="CDRED with sigma 5 in Eq. 5 and the released init: about the reward "
                                       "scale of the RND draw without its other changes (a scale ablation)"),
    "cdred-obs": Method({"reward": "cdred", "method": "cdred", "reward_space": "obs"},
                        description="CDRED with the reward model on the observations instead of the world "
                                    "model's latents (a reward-space ablation)"),
    "cdred-gexp": Method({"reward": "cdred", "method": "cdred", "g": "exp"},
                         description="CDRED with g = exp in Eq. 5 instead of the identity (the Fig. 11 ablation)"),
    "cdred-demos5": Method({"reward": "cdred", "method": "cdred", "num_demos": 5},
                           description="CDRED from the first 5 of the task's demos (a demo-count ablation, "
                                       "App. D.2)"),
    "cdred-demos10": Method({"reward": "cdred", "method": "cdred", "num_demos": 10},
                            description="CDRED from the first 10 of the task's demos (a demo-count ablation)"),
    "cdred-tremble": Method({"reward": "cdred", "method": "cdred", "tremble": 0.1},
                            description="CDRED trained under tremble noise p = 0.1 (App. D.4); evaluated "
                                        "without noise, and at every --eval-tremble p"),
    "cdred-mppi-eval": Method({"reward": "cdred", "method": "cdred"}, evaluate={"plan": True},
                              description="CDRED trained with the preset's acting (the run of `cdred`) and "
                                          "evaluated acting with MPPI on its reward, as the paper evaluates"),
    "cdred-rnd-init-mppi-eval": Method({"reward": "cdred", "method": "cdred", "reward_init": "rnd"},
                                       evaluate={"plan": True},
                                       description="the run of `cdred-rnd-init`, evaluated acting with MPPI"),
    "iqmpc-mppi-eval": Method({"reward": "cdred", "method": "iqmpc"}, evaluate={"plan": True},
                              description="the run of `iqmpc`, evaluated acting with MPPI on the reward its "
                                          "critic recovers"),
}


def method_spec(name: str) -> Method:
    """The registered method ``name``; a one-line UsageError listing the registered ones otherwise."""
    if name not in METHODS:
        raise UsageError(f"--methods {name!r}: choose from {', '.join(METHODS)}")
    return METHODS[name]


# ------------------------------------------------------------------------------------------ config
def _names(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A comma list (or sequence) of names as a tuple of stripped, non-empty names."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(s).strip() for s in items if str(s).strip())


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: tasks x methods x seeds on one pipeline preset. ``None`` counts take the preset's
    (``eval_episodes``: :data:`FINAL_EVAL_EPISODES` for cpu and paper, else the preset's own)."""

    tasks: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("cdred", "red")
    preset: str = "quickstart"
    obs: str = "state"                # rgb: the demos rendered by render-visual, every run from pixels
    num_demos: int | None = None      # demo episodes collected and used
    env_steps: int | None = None      # imitation env steps per run
    expert_env_steps: int | None = None  # env steps of each trained (TD-MPC2) expert
    eval_episodes: int | None = None  # episodes of the final evaluation
    expert_seed: int = 0              # the seed of every task's expert and demos
    eval_tremble: tuple[float, ...] = (0.0,)  # tremble p of each final evaluation (App. D.4), sorted; 0: the result
    device: str = "auto"
    name: str = "sweep"               # the output folder <workdir>/sweeps/<name>
    log: tuple[str, ...] = ()         # TensorBoard / W&B views of every run's training (not in any cache key)

    def __post_init__(self) -> None:
        from cdred_pipeline.envs import check_tremble
        from cdred_pipeline.stages.collect_experts import parse_tasks

        if self.preset not in PIPELINE_PRESETS:
            raise UsageError(f"--preset {self.preset!r}: choose one of {', '.join(PIPELINE_PRESETS)}")
        if self.obs not in ("state", "rgb"):
            raise UsageError(f"--obs {self.obs!r}: choose state or rgb")
        object.__setattr__(self, "tasks", tuple(parse_tasks(list(_names(self.tasks)) or [""])))
        object.__setattr__(self, "methods", _names(self.methods))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "eval_tremble", tuple(sorted(check_tremble(p) for p in self.eval_tremble)))
        if 0.0 not in self.eval_tremble or len(set(self.eval_tremble)) != len(self.eval_tremble):
            raise UsageError(f"--eval-tremble needs distinct p including 0 (the final result is the evaluation "
                             f"without noise), got {list(self.eval_tremble)}")
        object.__setattr__(self, "log", check_log_names(self.log))
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise UsageError(f"--methods needs distinct names from {', '.join(METHODS)}, got {list(self.methods)}")
        for m in self.methods:
            method_spec(m)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"--seeds needs distinct integers, got {list(self.seeds)}")
        for opt, v in (("--num-demos", self.num_demos), ("--env-steps", self.env_steps),
                       ("--expert-env-steps", self.expert_env_steps), ("--eval-episodes", self.eval_episodes)):
            if v is not None and v < 1:
                raise UsageError(f"{opt} must be >= 1, got {v}")
        if not _NAME.match(self.name):
            raise UsageError(f"--name {self.name!r}: use letters, digits, '.', '_' and '-' (a folder name)")

    @property
    def overrides(self) -> dict[str, Any]:
        """The pipeline-preset settings this sweep changes (cdred_pipeline/presets.py names)."""
        out: dict[str, Any] = {"eval_episodes": self.final_eval_episodes}
        if self.num_demos is not None:
            out.update(episodes=self.num_demos, num_demos=self.num_demos)
        if self.env_steps is not None:
            out["imitate_env_steps"] = self.env_steps
        if self.expert_env_steps is not None:
            out["expert_env_steps"] = self.expert_env_steps
        return out

    @property
    def final_eval_episodes(self) -> int:
        """Episodes of each run's final evaluation."""
        if self.eval_episodes is not None:
            return self.eval_episodes
        return FINAL_EVAL_EPISODES.get(self.preset, PIPELINE_PRESETS[self.preset]["eval_episodes"])

    @property
    def trembles(self) -> bool:
        """Whether the final evaluations also run under tremble noise (p > 0)."""
        return len(self.eval_tremble) > 1

    @property
    def settings(self) -> dict[str, Any]:
        """The pipeline preset's settings with this sweep's changes."""
        return {**PIPELINE_PRESETS[self.preset], **self.overrides}

    def pipeline_config(self, task: str, seed: int) -> Any:
        """The ``cdred pipeline`` config of one run (its stage configs are the pipeline's)."""
        from cdred_pipeline.stages.pipeline import PipelineConfig

        return PipelineConfig(task=task, preset=self.preset, obs=self.obs, seed=seed, tremble=self.eval_tremble,
                              device=self.device, overrides=self.overrides, log=self.log)

    def command(self, workdir: str | os.PathLike) -> str:
        """The command line that reproduces this sweep, with every count spelled out."""
        s = self.settings
        args = ["cdred", "--workdir", str(workdir), "sweep", "--tasks", ",".join(self.tasks),
                "--seeds", ",".join(map(str, self.seeds)), "--methods", ",".join(self.methods),
                "--preset", self.preset, *(("--obs", self.obs) if self.obs != "state" else ()),
                "--num-demos", str(min(s["num_demos"], s["episodes"])),
                "--env-steps", str(s["imitate_env_steps"]), "--eval-episodes", str(self.final_eval_episodes),
                "--expert-seed", str(self.expert_seed), "--expert-env-steps", str(s["expert_env_steps"]),
                *(("--eval-tremble", ",".join(f"{p:g}" for p in self.eval_tremble)) if self.trembles else ()),
                "--device", self.device, "--name", self.name,
                *(a for name in self.log for a in ("--log", name))]
        return " ".join(shlex.quote(a) for a in args)


# ------------------------------------------------------------------------------------------ units
@dataclass(frozen=True)
class RunUnit:
    """One executor unit: a (task, method, seed) run, picklable. ``imitate`` and ``evaluate`` are the
    run's stage configs (ImitateConfig with the method's fields, EvalConfig), built and checked on the driver."""

    task: str
    method: str
    seed: int
    spec: Method
    imitate: Any
    evaluate: Any
    dataset: str
    workdir: str
    progress: bool = False
    replay: dict[str, Any] | None = None  # the sweep command's record, written into the run's manifests
    read_only: bool = False               # --report-only: take finished artifacts, start none


def imitate_and_evaluate(unit: RunUnit) -> dict[str, str]:
    """The default runner: imitate from the task's demos, then evaluate the final agent (both cached)."""
    from cdred_pipeline.stages import evaluate, imitate

    store = ArtifactStore(unit.workdir, replay=unit.replay, read_only=unit.read_only)
    imit = imitate.run(unit.imitate, unit.dataset, store, progress=unit.progress)
    ev = evaluate.run(unit.evaluate, str(imit.path / "agent.pt"), store, progress=unit.progress)
    return {"imitate_key": imit.key, "eval_key": ev.key}


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def run_unit(unit: RunUnit) -> dict[str, Any]:
    """Run one (task, method, seed) with its method's runner; an exception becomes an error row, so one
    crashed run never stops the others; a run not made yet (read-only) is marked ``missing``."""
    row: dict[str, Any] = {"task": unit.task, "method": unit.method, "seed": unit.seed}
    try:
        runner = unit.spec.runner or imitate_and_evaluate
        return {**row, **runner(unit), "error": None}
    except NotMadeError as exc:
        return {**row, "error": _one_line(exc), "missing": True}
    except Exception as exc:  # noqa: BLE001 - recorded as the run's failure, reported in the summary
        return {**row, "error": _one_line(exc)}


def plan_units(cfg: SweepConfig, datasets: Mapping[str, str], workdir: str, progress: bool,
               replay: dict[str, Any] | None = None, read_only: bool = False) -> list[RunUnit]:
    """Every (task, method, seed) unit whose task has demos, task-major; each config is checked here."""
    from cdred_pipeline.stages.pipeline import eval_config, imitate_config

    units = []
    for task in cfg.tasks:
        for m in cfg.methods:
            spec = method_spec(m)
            for seed in cfg.seeds:
                pcfg = cfg.pipeline_config(task, seed)
                icfg = dataclasses.replace(imitate_config(pcfg), **dict(spec.imitate))
                if task in datasets:
                    ecfg = dataclasses.replace(eval_config(pcfg), **dict(spec.evaluate))
                    units.append(RunUnit(task=task, method=m, seed=seed, spec=spec, imitate=icfg,
                                         evaluate=ecfg, dataset=datasets[task], workdir=workdir,
                                         progress=progress, replay=replay, read_only=read_only))
    return units


# ------------------------------------------------------------------------------------------ experts
def prepare_tasks(cfg: SweepConfig, store: ArtifactStore,
                  progress: bool) -> tuple[dict[str, Artifact], dict[str, str], dict[str, dict]]:
    """Every task's demos artifact and the dataset path its runs imitate, in order (the pipeline's chain, made
    once for every method and seed); a task whose expert, demos or pixels fail (or are not made, read-only)
    gets the outcome fields of its runs: the one-line error, and ``missing`` when not made."""
    from cdred_pipeline.stages.pipeline import demos_chain

    demos, datasets, errors = {}, {}, {}
    for task in cfg.tasks:
        try:
            _, demos[task], source = demos_chain(cfg.pipeline_config(task, cfg.expert_seed), store, progress=progress)
            datasets[task] = str((source.path / DATASET_NAME).resolve())
        except Exception as exc:  # noqa: BLE001 - every run of the task fails with this error
            errors[task] = {"error": f"expert/demos: {_one_line(exc)}", "missing": isinstance(exc, NotMadeError)}
    return demos, datasets, errors


def check_configs(cfg: SweepConfig) -> None:
    """Build every stage config of the sweep (one-line UsageError) before anything runs."""
    from cdred_pipeline.stages.pipeline import collect_config

    for task in cfg.tasks:
        collect_config(cfg.pipeline_config(task, cfg.expert_seed))
    plan_units(cfg, {}, "", False)


def execute(units: list[RunUnit], executor: Any, desc: str, progress: bool) -> list[dict[str, Any]]:
    """Every unit's outcome through ``executor``; units lost with their worker get the executor's error."""
    from cdred_pipeline.executor import ExecutorError

    done: dict[int, dict[str, Any]] = {}

    def keep(i: int, out: dict[str, Any]) -> None:
        done[i] = out

    try:
        executor.map(run_unit, units, desc=desc, progress=progress, on_result=keep)
    except ExecutorError as exc:
        lost = _one_line(exc)
        for i, u in enumerate(units):
            done.setdefault(i, {"task": u.task, "method": u.method, "seed": u.seed, "error": lost})
    return [done[i] for i in range(len(units))]


# ------------------------------------------------------------------------------------------ rows
def _f(value: Any) -> float | None:
    """A finite float, or None."""
    if value is None:
        return None
    v = float(value)
    return v if np.isfinite(v) else None


def _success(task: str, value: Any) -> float | None:
    """A success rate as a finite float; None (an empty CSV cell) for a task without a success flag."""
    from cdred_pipeline.envs import reports_success

    return _f(value) if reports_success(task) else None


def curve_rows(run: dict[str, Any], imit: Artifact) -> list[dict[str, Any]]:
    """The learning curve of one run: the imitate artifact's evaluation rows (metrics.jsonl)."""
    from cdred_pipeline.stages.evaluate import normalized_score

    scores = imit.manifest.get("scores", {})
    rows = []
    for r in _eval_metrics(imit):
        ret = float(r["eval_return_mean"])
        rows.append({**run, "point": "curve", "env_steps": int(r["env_step"]), "return": ret,
                     "success": _success(run["task"], r.get("eval_success_rate")),
                     "normalized_score": _f(normalized_score(ret, scores)),
                     "episodes": int(r.get("eval_episodes", 0)), "wall_time_s": round(float(r.get("wall_s", 0)), 3)})
    return rows


def _eval_metrics(imit: Artifact) -> list[dict[str, Any]]:
    """The ``eval`` rows of the imitate artifact's metrics.jsonl."""
    from cdred_pipeline.agent.trainer import read_jsonl

    return [r for r in read_jsonl(Path(imit.path) / "metrics.jsonl") if r.get("kind") == "eval"]


def final_row(run: dict[str, Any], imit: Artifact, ev: Artifact) -> dict[str, Any]:
    """The run's final evaluation (tremble 0); its wall time is the training's plus the evaluation's, as
    the artifacts recorded them."""
    agg = next(a for a in ev.manifest["aggregates"] if float(a["p"]) == 0.0)
    report = json.loads((Path(ev.path) / "report.json").read_text())
    train = imit.manifest.get("train", {})
    wall = float(train.get("wall_s", 0.0)) + float(report.get("wall_s", 0.0))
    return {**run, "point": "final", "env_steps": int(train.get("env_step") or imit.manifest["headline"]["env_steps"]),
            **_aggregate_cells(run["task"], agg), "wall_time_s": round(wall, 3)}


def _aggregate_cells(task: str, agg: Mapping[str, Any]) -> dict[str, Any]:
    """The return, success, normalised score and episodes of one aggregate (one p) of an ``eval`` artifact."""
    return {"return": float(agg["return_mean"]), "success": _success(task, agg["success_rate"]),
            "normalized_score": _f(agg["normalized_score"]), "episodes": int(agg["episodes"])}


def tremble_rows(run: dict[str, Any], ev: Artifact) -> list[dict[str, Any]]:
    """The run's final evaluation at every tremble p of its ``eval`` artifact (tremble.csv rows)."""
    return [{**{k: run[k] for k in ("task", "method", "seed")}, "p": float(a["p"]), **_aggregate_cells(run["task"], a),
             "eval_key": run["eval_key"]} for a in sorted(ev.manifest["aggregates"], key=lambda a: float(a["p"]))]


def run_rows(out: dict[str, Any], store: ArtifactStore) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Curve and final rows of one finished run, and its final evaluation at every tremble p, read from its
    artifacts."""
    from cdred_pipeline.stages import evaluate, imitate

    imit, ev = store.get(imitate.STAGE, out["imitate_key"]), store.get(evaluate.STAGE, out["eval_key"])
    if imit is None or ev is None:
        raise CdredError(f"the run reported imitate/{out['imitate_key']} and eval/{out['eval_key']} but "
                         f"{store.root} does not hold them; with Ray, --workdir must be on storage every node sees")
    run = {k: out[k] for k in ("task", "method", "seed", "imitate_key", "eval_key")}
    return curve_rows(run, imit) + [final_row(run, imit, ev)], tremble_rows(run, ev)


def sort_key(row: Mapping[str, Any]) -> tuple:
    """Task, method, seed, curve before final, env steps."""
    return (row["task"], row["method"], int(row["seed"]), row["point"] != "curve", int(row["env_steps"]))


def gather(outcomes: list[dict[str, Any]],
           store: ArtifactStore) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """All result rows (sorted), the tremble rows (sorted) and the failed runs (task, method, seed, error)."""
    rows, trows, failed = [], [], []
    for out in outcomes:
        if out.get("error") is None:
            try:
                curve_final, tremble = run_rows(out, store)
                rows += curve_final
                trows += tremble
                continue
            except CdredError as exc:
                out = {**out, "error": _one_line(exc)}
        failed.append({**{k: out[k] for k in ("task", "method", "seed", "error")}, "missing": bool(out.get("missing"))})
    return (sorted(rows, key=sort_key), sorted(trows, key=lambda r: (r["task"], r["method"], r["seed"], r["p"])),
            sorted(failed, key=lambda f: (f["task"], f["method"], f["seed"])))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file and a rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def csv_text(rows: list[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS) -> str:
    """The rows as CSV (:data:`CSV_COLUMNS` unless told; an unknown value is an empty cell)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ statistics
def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of all values (25% trimmed on each side, as
    ``scipy.stats.trim_mean(x, 0.25, axis=None)`` and rliable's ``aggregate_iqm``)."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    cut = int(0.25 * v.size)
    return float(v[cut:v.size - cut].mean())


def iqm_ci(per_task: list[np.ndarray], *, reps: int = IQM_BOOTSTRAP_REPS, level: float = 0.95,
           seed: int = 0) -> tuple[float, float, float]:
    """IQM over all runs x tasks and its stratified-bootstrap percentile CI: every replicate resamples the
    runs of each task with replacement, separately per task (rliable's ``StratifiedBootstrap``)."""
    tasks = [np.asarray(v, dtype=np.float64) for v in per_task if len(v)]
    point = iqm(np.concatenate(tasks))
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, reps, 1000):
        n = min(1000, reps - start)
        sample = np.concatenate([v[rng.integers(0, len(v), size=(n, len(v)))] for v in tasks], axis=1)
        sample.sort(axis=1)
        cut = int(0.25 * sample.shape[1])
        stats.append(sample[:, cut:sample.shape[1] - cut].mean(axis=1))
    lo, hi = np.percentile(np.concatenate(stats), [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return point, float(lo), float(hi)


def is_metaworld(task: str) -> bool:
    """Meta-World tasks are judged by success; the others by return."""
    return task.startswith("mw:")


def _mean_ci(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    """The mean and 95% bootstrap CI of the values that are not None; None when there are none."""
    from cdred_pipeline.stages.evaluate import bootstrap_ci

    v = np.array([x for x in values if x is not None], dtype=np.float64)
    return (float(v.mean()), *bootstrap_ci(v)) if len(v) else None


def method_table(tasks: Sequence[str], methods: Sequence[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and method: the finished seeds and the mean and 95% bootstrap CI (over seeds) of the final
    success, return and normalised score."""
    out = []
    for task in tasks:
        for m in methods:
            finals = [r for r in rows if r["point"] == "final" and r["task"] == task and r["method"] == m]
            entry: dict[str, Any] = {"task": task, "method": m, "seeds": len(finals)}
            for col in ("success", "return", "normalized_score"):
                entry[col] = _mean_ci([r[col] for r in finals])
            out.append(entry)
    return out


def aggregates(tasks: Sequence[str], methods: Sequence[str],
               rows: list[dict[str, Any]]) -> list[tuple[str, str, tuple[float, float, float] | None, int, int]]:
    """(method, metric, (IQM, CI low, CI high), tasks with a value, tasks) across tasks: the final normalised
    score over every task and the final success over the Meta-World tasks (None without values)."""
    out = []
    for m in methods:
        for metric, col, over in (("normalised score", "normalized_score", tasks),
                                  ("success (Meta-World)", "success", [t for t in tasks if is_metaworld(t)])):
            if not over:
                continue
            per_task = [np.array([r[col] for r in rows if r["point"] == "final" and r["task"] == t
                                  and r["method"] == m and r[col] is not None]) for t in over]
            have = sum(bool(len(v)) for v in per_task)
            out.append((m, metric, iqm_ci(per_task) if have else None, have, len(over)))
    return out


# ------------------------------------------------------------------------------------------ summary
def _ci(v: tuple[float, float, float] | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else f"{v[0]:{fmt}} [{v[1]:{fmt}}, {v[2]:{fmt}}]"


def _score_cells(scores: Mapping[str, Any], name: str, task: str) -> str:
    s = scores.get(name) or {}
    ret = "-" if s.get("return_mean") is None else f"{s['return_mean']:.2f}"
    success = _success(task, s.get("success_rate"))
    succ = "-" if success is None else f"{success:.2f}"
    return f"{ret} | {succ}"


def summary_text(cfg: SweepConfig, workdir: str, demos: Mapping[str, Artifact], rows: list[dict[str, Any]],
                 failed: list[dict[str, Any]], runs: int, trows: Sequence[dict[str, Any]] = ()) -> str:
    """summary.md: how to reproduce, the setting, reference scores, per task/method results, IQMs, the
    results under tremble noise (with ``--eval-tremble``), failures."""
    noisy = ", ".join(f"{p:g}" for p in cfg.eval_tremble if p > 0)
    s = cfg.settings
    lines = [f"# cdred sweep `{cfg.name}`", "", "Reproduce (resumes from the cache in the same work dir):", "",
             "```", cfg.command(workdir), "```", "",
             f"Setting: preset `{cfg.preset}`, {s['imitate_env_steps']} env steps per run"
             + (" from pixels (the demos rendered by render-visual, online frames from the pixel env)"
                if cfg.obs == "rgb" else "") + ", "
             f"{min(s['num_demos'], s['episodes'])} demos (expert seed {cfg.expert_seed}), final evaluation "
             f"{cfg.final_eval_episodes} episodes without tremble" + (f" and at tremble p = {noisy}" if noisy else "")
             + f"; {len(cfg.tasks)} tasks x {len(cfg.methods)} methods "
             f"x {len(cfg.seeds)} seeds = {runs} runs, {runs - len(failed)} finished.", "",
             "## Expert and random policy", "", "| task | expert return | expert success | random return | "
             "random success |", "| --- | ---: | ---: | ---: | ---: |"]
    for task in cfg.tasks:
        sc = demos[task].manifest.get("scores", {}) if task in demos else {}
        lines.append(f"| {task} | {_score_cells(sc, 'expert', task)} | {_score_cells(sc, 'random', task)} |")
    lines += [""] + results_lines(cfg.tasks, cfg.methods, rows)
    if cfg.trembles:
        lines += tremble_lines(cfg.tasks, cfg.methods, cfg.eval_tremble, trows)
    return "\n".join(lines + _failure_lines(failed)) + "\n"


def _judged_by(task: str) -> tuple[str, str]:
    """(results column, axis label) a task is judged by: success for Meta-World, else return."""
    return ("success", "success rate") if is_metaworld(task) else ("return", "episode return")


def tremble_lines(tasks: Sequence[str], methods: Sequence[str], ps: Sequence[float],
                  trows: Sequence[dict[str, Any]]) -> list[str]:
    """The summary's table of the final evaluations under tremble noise (App. D.4): per task and method, the
    mean [95% bootstrap CI] over seeds at each p of success (Meta-World) or return."""
    lines = ["## Under tremble noise (App. D.4): final evaluation at each p (mean [95% bootstrap CI] over seeds; "
             "success on Meta-World, else return; tremble.csv)", "",
             "| task | method | seeds | " + " | ".join(f"p = {p:g}" for p in ps) + " |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in ps) + " |"]
    for task in tasks:
        col, _ = _judged_by(task)
        for m in methods:
            sel = [r for r in trows if r["task"] == task and r["method"] == m]
            cells = []
            for p in ps:
                cells.append(_ci(_mean_ci([r[col] for r in sel if r["p"] == p]), ".2f" if col == "success" else ".1f"))
            lines.append(f"| {task} | {m} | {len({r['seed'] for r in sel})} | " + " | ".join(cells) + " |")
    return lines + [""]


def results_lines(tasks: Sequence[str], methods: Sequence[str], rows: list[dict[str, Any]]) -> list[str]:
    """The summary's results: per task and method the final evaluation over seeds, then the IQMs across
    tasks (shared by ``cdred sweep`` and ``cdred sweep-merge``)."""
    lines = ["## Final evaluation (mean [95% bootstrap CI] over seeds)", "",
             "| task | method | seeds | success | return | normalised score |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for e in method_table(tasks, methods, rows):
        lines.append(f"| {e['task']} | {e['method']} | {e['seeds']} | {_ci(e['success'])} | {_ci(e['return'])} | "
                     f"{_ci(e['normalized_score'], '.1f')} |")
    lines += ["", "## Across tasks: interquartile mean (IQM) [stratified-bootstrap 95% CI]", ""]
    lines += [f"- IQM {metric} of {m}: {_ci(v, '.2f')}" + (f" (over {have} of {n} tasks)" if 0 < have < n else "")
              for m, metric, v, have, n in aggregates(tasks, methods, rows)]
    lines += ["", f"IQM: the 25% trimmed mean over all runs x tasks; CI: {IQM_BOOTSTRAP_REPS} stratified-bootstrap "
              "replicates (the runs of each task resampled), percentile interval; computed with cdred's own numpy "
              "implementation of rliable's `aggregate_iqm` and `StratifiedBootstrap`.", ""]
    return lines


def _failure_lines(failed: list[dict[str, Any]]) -> list[str]:
    """The failed runs (or None.), then the runs a report-only sweep found not made yet."""
    broken = [f"- {f['task']} {f['method']} seed {f['seed']}: {f['error']}" for f in failed if not f["missing"]]
    lines = ["## Failed runs", ""] + (broken or ["None."])
    missing = [f"- {f['task']} {f['method']} seed {f['seed']}" for f in failed if f["missing"]]
    if missing:
        lines += ["", "## Runs not made yet (`--report-only` started none)", ""] + missing
    return lines


# ------------------------------------------------------------------------------------------ figures
def plot_task(path: Path, task: str, methods: Sequence[str], rows: list[dict[str, Any]], scores: Mapping[str, Any],
              source: str) -> None:
    """Mean over seeds (min-max band) of success (Meta-World) or return against env steps, per method, with
    the expert's level dashed and the random policy's dotted (when ``scores`` has them); ``source`` names
    the sweep in the title. BC never steps the env: its points sit where an online run has made as many
    updates (cdred_pipeline/agent/bc.py), and its label says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col, label = _judged_by(task)
    ref_key = "success_rate" if col == "success" else "return_mean"
    fig, ax = plt.subplots(figsize=(8, 4))
    for m in methods:
        offline = m in METHODS and METHODS[m].imitate.get("method") == "bc"
        line_label = f"{m} (offline: at an online run's updates)" if offline else m
        _plot_method(ax, line_label, [r for r in rows if r["task"] == task and r["method"] == m and r["point"] == "curve"],
                     col)
    for name, style in (("expert", "--"), ("random", ":")):
        level = (scores.get(name) or {}).get(ref_key)
        if level is not None:
            ax.axhline(float(level), color="black" if name == "expert" else "grey", linestyle=style, label=name)
    _finish_figure(fig, ax, path, "env steps", label, f"{task}\nmean over seeds, band min-max ({source})")


def _finish_figure(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Label the axes, title on two lines and the legend beside the curves (not over them), then save the
    figure atomically and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)  # two lines: fits beside the legend
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


def plot_tremble(path: Path, task: str, methods: Sequence[str], trows: Sequence[dict[str, Any]], source: str) -> None:
    """Mean over seeds (min-max band) of the final success (Meta-World) or return against the tremble p of
    the evaluation, per method (App. D.4's robustness curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col, label = _judged_by(task)
    fig, ax = plt.subplots(figsize=(8, 4))
    for m in methods:
        _plot_method(ax, m, [r for r in trows if r["task"] == task and r["method"] == m], col, x="p")
    _finish_figure(fig, ax, path, "tremble probability p of the evaluation", label,
                   f"{task} under tremble noise\nmean over seeds, band min-max ({source})")


def _plot_method(ax: Any, label: str, rows: Sequence[dict[str, Any]], col: str, x: str = "env_steps") -> None:
    """One method's mean line and min-max band over seeds, against the rows' ``x`` column."""
    steps = sorted({r[x] for r in rows})
    vals = [[r[col] for r in rows if r[x] == s and r[col] is not None] for s in steps]
    pts = [(s, v) for s, v in zip(steps, vals) if v]
    if not pts:
        return
    x = [s for s, _ in pts]
    line, = ax.plot(x, [np.mean(v) for _, v in pts], marker="o", label=label)
    ax.fill_between(x, [min(v) for _, v in pts], [max(v) for _, v in pts], color=line.get_color(), alpha=0.2)


def figure_name(task: str) -> str:
    """``dmc:cartpole-balance`` -> ``dmc_cartpole-balance.png``."""
    return task.replace(":", "_") + ".png"


# ------------------------------------------------------------------------------------------ stage
@dataclass
class SweepResult:
    """Where the outputs are, the per task/method table, and the failed runs."""

    folder: Path
    csv: Path
    summary: Path
    figures: list[Path]
    table: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    runs: int

    @property
    def failures(self) -> int:
        """The number of failed runs."""
        return sum(not f["missing"] for f in self.failed)

    @property
    def missing(self) -> int:
        """The number of runs not made yet (a report-only sweep)."""
        return sum(f["missing"] for f in self.failed)


def run(cfg: SweepConfig, store: ArtifactStore, *, executor: Any = None, progress: bool = True,
        report_only: bool = False) -> SweepResult:
    """Run (or take from the cache) every (task, method, seed) of the sweep and write its outputs.

    ``executor``: :func:`cdred_pipeline.executor.executor_for` (default: one run after the other here).
    Failed runs are recorded, never raised: the result lists them (``failures``). ``report_only``: write
    the outputs from the finished runs alone, starting none (the others are listed: ``missing``)."""
    from cdred_pipeline.executor import make_executor

    check_configs(cfg)
    workdir = str(Path(store.root).resolve())
    look = ArtifactStore(store.root, store.notify, read_only=True) if report_only else store
    demos, datasets, task_errors = prepare_tasks(cfg, look, progress)
    ex = executor if executor is not None else make_executor("local")
    units = plan_units(cfg, datasets, workdir, progress and ex.kind == "local", store.replay, report_only)
    outcomes = execute(units, ex, f"sweep {cfg.name} ({len(units)} runs)", progress)
    outcomes += [{"task": t, "method": m, "seed": s, **err} for t, err in task_errors.items()
                 for m in cfg.methods for s in cfg.seeds]
    rows, trows, failed = gather(outcomes, store)
    runs = len(cfg.tasks) * len(cfg.methods) * len(cfg.seeds)
    return write_outputs(cfg, store, demos, rows, failed, runs, trows)


def write_outputs(cfg: SweepConfig, store: ArtifactStore, demos: Mapping[str, Artifact], rows: list[dict[str, Any]],
                  failed: list[dict[str, Any]], runs: int, trows: Sequence[dict[str, Any]] = ()) -> SweepResult:
    """results.csv, summary.md and figures/<task>.png under <workdir>/sweeps/<name>/, each written atomically;
    with ``--eval-tremble`` also tremble.csv and figures/tremble_<task>.png."""
    folder = Path(store.root) / "sweeps" / cfg.name
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    csv_path, summary_path = folder / "results.csv", folder / "summary.md"
    write_text_atomic(csv_path, csv_text(rows))
    figures = []
    for task in cfg.tasks:
        figures.append(folder / "figures" / figure_name(task))
        scores = demos[task].manifest.get("scores", {}) if task in demos else {}
        plot_task(figures[-1], task, cfg.methods, rows, scores, f"sweep {cfg.name}")
    if cfg.trembles:
        write_text_atomic(folder / "tremble.csv", csv_text(list(trows), TREMBLE_COLUMNS))
        for task in cfg.tasks:
            figures.append(folder / "figures" / f"tremble_{figure_name(task)}")
            plot_tremble(figures[-1], task, cfg.methods, trows, f"sweep {cfg.name}")
    write_text_atomic(summary_path, summary_text(cfg, str(store.root), demos, rows, failed, runs, trows))
    return SweepResult(folder=folder, csv=csv_path, summary=summary_path, figures=figures,
                       table=method_table(cfg.tasks, cfg.methods, rows), failed=failed, runs=runs)


def format_table(result: SweepResult) -> str:
    """The compact table printed at the end of ``cdred sweep``: final success and return means."""
    lines = [f"{'task':<28} {'method':<14} {'seeds':>5} {'success':>8} {'return':>10}"]
    for e in result.table:
        succ = "-" if e["success"] is None else f"{e['success'][0]:.2f}"
        ret = "-" if e["return"] is None else f"{e['return'][0]:.2f}"
        lines.append(f"{e['task']:<28} {e['method']:<14} {e['seeds']:>5} {succ:>8} {ret:>10}")
    return "\n".join(lines)
