"""`cdred render-visual`: render stored expert states into a pixel dataset, in parallel, verified
(paper §4.3; ARCHITECTURE §2, §5, §6; issue 5).

The paper's visual datasets are state-based expert trajectories whose observations are replaced by
RGB images rendered from the stored states (§4.3). :func:`run` restores every ``data/physics_state``
row (and every ``meta/final_physics_state``) in a fresh environment of the dataset's task and renders
it exactly as ``make_env(task, obs="rgb")`` does online (same renderer, camera, size and render
profile), so an agent trained on rendered demos sees the pixels it will see online. The frames go
into a NEW dataset inside the artifact folder (``<workdir>/render-visual/<key>/demos.zarr``: a copy
of the input with ``data/rgb/<camera>`` (N, H, W, 3) and ``meta/final_rgb/<camera>`` (E, H, W, 3)
added); the input is never modified. Frame stacking is the reader's job
(:func:`cdred_pipeline.datasets.load_episodes`), not stored.

Work is split into episode ranges (the work units). One worker renders in the driver process and
appends to the output as it goes; ``workers > 1`` runs a pool of spawned processes (one GL context
each) that each write a part store per range; the driver merges the parts in episode order as they
arrive and deletes them. With an ``executor`` (:func:`cdred_pipeline.executor.make_executor`, e.g.
``--ray-address``: ARCHITECTURE §7) the ranges are executor units instead: each unit
(:func:`render_unit`) reads its states from the input dataset's absolute path and writes its part
store under the artifact's ``.partial/parts`` folder (so on a multi-node Ray cluster the dataset and
``--workdir`` must be on storage every node sees), and returns only a summary; the driver records
the unit and appends the parts in episode order with the same writer, so memory stays bounded by one
range and the frames are those of the local run. A range is recorded as a finished unit in the
manifest only once its frames are durable, so a killed run (or a lost worker, or a unit that fails
after its retries) resumes from the recorded ranges. The result does not depend on the executor, the
number of workers or the range size (bitwise; tested), so none of them is part of the cache key.

Verification (``verify``): the probe frames hashed at collection time (``attrs.sim.probe``, see
:func:`cdred_pipeline.render.probe_frames`) are re-rendered here and compared before the long run; a
mismatch (other GL backend, other simulator version) is reported with its PSNR and the versions in
the manifest and as a :class:`RenderMismatchWarning`, never silently accepted. After the run, the
frames written at the probe steps are checked against the same hashes when the settings agree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline import render as R
from cdred_pipeline.artifacts import Artifact, ArtifactStore, artifact_key
from cdred_pipeline.errors import CdredError, DatasetError, UsageError
from cdred_pipeline.stages.common import artifact_of, hash_files
from cdred_pipeline.stages.common import dataset_path as resolve_dataset

__all__ = ["STAGE", "STAGE_VERSION", "DATASET_NAME", "RenderConfig", "PRESETS", "RenderMismatchWarning",
           "run", "resolve_dataset", "dataset_identity", "summary_line", "RangeUnit", "render_unit"]

STAGE = "render-visual"
STAGE_VERSION = 1
DATASET_NAME = "demos.zarr"
#: Test hook: seconds to sleep after each recorded unit (makes kill-and-resume tests deterministic).
UNIT_DELAY_ENV = "CDRED_RENDER_UNIT_DELAY_S"
#: Auto range size aims at this many ranges per worker (progress granularity vs. per-range overhead).
RANGES_PER_WORKER = 4
#: ... and at most this many frames per range, so a part store stays small (MB, not GB).
MAX_RANGE_FRAMES = 20_000


class RenderMismatchWarning(UserWarning):
    """Re-rendered probe frames differ from the collection-time hashes (other GL backend or versions)."""


@dataclass(frozen=True)
class RenderConfig:
    """Settings of render-visual. Only ``size``, ``camera`` and ``render_profile`` change the pixels
    (they form the cache key with the input dataset's identity); the rest is how the work is done.

    Attributes:
        size: image side in pixels, 16-512 (64 = TD-MPC2's and make_env's default).
        camera: camera name or id; None = the task's default camera (what make_env uses online).
        workers: render processes (1 = render in this process; >1 = a spawn pool, one GL context each).
        render_profile: ``"fast"`` or ``"default"``; None = the dataset's own (attrs.env.render_profile,
            else the probe's, else ``"fast"``): the profile must be the one used online.
        verify: re-render the collection-time probe frames and compare their hashes.
        chunk_episodes: episodes per work unit (range); 0 = auto (about 4 ranges per worker).
        lp_threads: llvmpipe threads per worker process when ``workers > 1`` (None = cores // workers;
            ignored where LP_NUM_THREADS is set or the GL driver is not llvmpipe). Never changes pixels.
    """

    size: int = 64
    camera: str | None = None
    workers: int = 1
    render_profile: str | None = None
    verify: bool = True
    chunk_episodes: int = 0
    lp_threads: int | None = None

    def __post_init__(self) -> None:
        R.check_size(self.size)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise UsageError(f"workers must be a positive integer, got {self.workers!r}")
        if isinstance(self.chunk_episodes, bool) or not isinstance(self.chunk_episodes, int) or self.chunk_episodes < 0:
            raise UsageError(f"chunk_episodes must be a non-negative integer (0 = auto), got {self.chunk_episodes!r}")
        if self.render_profile is not None:
            from cdred_pipeline.envs import RENDER_PROFILES

            if self.render_profile not in RENDER_PROFILES:
                raise UsageError(f"render_profile must be one of {', '.join(RENDER_PROFILES)}, got {self.render_profile!r}")
        if self.camera is not None and (not str(self.camera) or "/" in str(self.camera)):
            raise UsageError(f"camera must be a camera name or id without '/', got {self.camera!r}")
        if self.lp_threads is not None and (not isinstance(self.lp_threads, int) or self.lp_threads < 0):
            raise UsageError(f"lp_threads must be a non-negative integer or None, got {self.lp_threads!r}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "RenderConfig":
        """A named preset (see :data:`PRESETS`) with fields replaced by ``overrides``."""
        if name not in PRESETS:
            raise UsageError(f"unknown render preset {name!r}: use one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, RenderConfig] = {
    "default": RenderConfig(),  # TD-MPC2 pixels: 64x64, the task's camera, the dataset's profile
    "parallel": RenderConfig(workers=max(1, min(8, os.cpu_count() or 1))),
    "large": RenderConfig(size=128),
}


# --------------------------------------------------------------------------------- dataset input
def dataset_identity(path: Path, attrs: Mapping[str, Any]) -> dict[str, str]:
    """Identity of the input for the cache key: ``{stage: key}`` when the dataset is the output of a
    complete artifact (``<artifact>/demos.zarr``), else ``{"dataset": "sha256:..."}`` over the things
    the frames depend on: the attrs, ``meta/episode_ends`` and the stored bytes of the physics-state
    arrays (path-independent: a moved or copied dataset keeps its cache)."""
    owner = artifact_of(path)
    if owner is not None:
        return {owner[0]: owner[1]}
    h = hashlib.sha256()
    h.update(json.dumps(attrs, sort_keys=True, default=str).encode())
    for key in ("meta/episode_ends", "data/physics_state", "meta/final_physics_state"):
        hash_files(h, path / key)
    return {"dataset": "sha256:" + h.hexdigest()[:32]}


def camera_of(config: RenderConfig, task: Any) -> str:
    """The camera name written to ``data/rgb/<camera>``: the configured one or the task's default."""
    from cdred_pipeline.envs import default_camera

    cam = config.camera if config.camera is not None else default_camera(task.suite, task.name)
    return R.camera_name(-1 if cam is None else cam)


def _resolve_profile(config: RenderConfig, attrs: Mapping[str, Any]) -> str:
    if config.render_profile is not None:
        return config.render_profile
    env_profile = (attrs.get("env") or {}).get("render_profile")
    if env_profile:
        return str(env_profile)
    for p in R.probes_of(attrs):
        if p.get("render_profile"):
            return str(p["render_profile"])
    return "fast"


# ------------------------------------------------------------------------------------ the ranges
def _split(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    return [(a, min(a + n, hi)) for a in range(lo, hi, n)]


def _auto_chunk(lengths: np.ndarray, workers: int) -> int:
    e = len(lengths)
    per = max(1, math.ceil(e / (RANGES_PER_WORKER * workers)))
    mean_frames = float(lengths.mean() + 1) if e else 1.0
    return max(1, min(per, int(MAX_RANGE_FRAMES // mean_frames)))


def _unit_name(a: int, b: int) -> str:
    return f"ep{a:06d}-{b:06d}"


# ------------------------------------------------------------------------------------------- run
def run(config: RenderConfig, dataset_path: str | os.PathLike, store: ArtifactStore, *, force: bool = False,
        progress: bool = True, executor: Any = None) -> Artifact:
    """Render every stored state of ``dataset_path`` into a new cached pixel dataset (see module docstring).

    ``executor``: None renders in this process (``config.workers == 1``) or in the render pool
    (``config.workers > 1``); an :class:`~cdred_pipeline.executor.Executor` (local, process or Ray)
    runs the episode ranges as its units instead (``config.workers`` is then unused). The caller
    owns the executor (closes it). Neither changes the pixels or the cache key.

    Returns the complete artifact; its folder holds ``demos.zarr`` and ``contact_sheet_<camera>.png``,
    its manifest ``headline`` (frames, fps, verify), ``render`` (settings, GL backend, workers) and
    ``verification`` (per probe: expected/got hash, match, PSNR; versions recorded vs here).

    Raises:
        DatasetError: the input is not a dataset, has no episodes, or stores no physics states (pixels
            cannot be re-rendered without them), or its states do not fit this simulator.
        MissingDependencyError: the task's simulator is not usable here.
        UsageError: bad config values (size outside 16-512, unknown camera, ...).
    """
    from cdred_pipeline.datasets import open_dataset
    from cdred_pipeline.envs import parse_task, task_available
    from cdred_pipeline.errors import MissingDependencyError

    path = Path(dataset_path)
    ds = open_dataset(path)
    attrs = ds.attrs
    task_id = (attrs.get("env") or {}).get("task")
    if not task_id:
        raise DatasetError(f"{path}: attrs.env.task is missing: cannot tell which simulator renders these states")
    p = parse_task(str(task_id))
    if ds.physics_state_dim == 0:
        raise DatasetError(f"{path}: data/physics_state has 0 columns: pixels cannot be re-rendered because the "
                           "dataset stores no simulator states (e.g. imported without them); re-collect with "
                           "`cdred collect-experts` or import a file that carries the states")
    if ds.num_episodes == 0:
        raise DatasetError(f"{path}: has no episodes to render")
    others = {c: ds.image_shape(c)[:2] for c in ds.cameras if c != camera_of(config, p)}
    clash = {c: hw for c, hw in others.items() if hw != (config.size, config.size)}
    if clash:
        c, (h, w) = next(iter(clash.items()))
        raise UsageError(f"{path}: already holds camera {c} at {h}x{w}; a dataset has one image size "
                         f"(attrs.env.image_size): render at --size {h}, or from a dataset without that camera")
    ok, why = task_available(p.task)
    if not ok:
        raise MissingDependencyError(f"{p.task}: cannot re-render this dataset here: {why}")
    camera = camera_of(config, p)
    profile = _resolve_profile(config, attrs)
    key_config = {"size": config.size, "camera": camera, "render_profile": profile}
    inputs = dataset_identity(path, attrs)
    if force or store.get(STAGE, artifact_key(STAGE, STAGE_VERSION, key_config, inputs)) is None:
        # before any folder is made: a fresh env here checks the camera, the state layout and the GL backend
        driver = R.cached_renderer(p.task, config.size, camera, profile)
        driver.check_states(ds.physics_state_dim, str(ds.path))
        R.gl_backend(driver)
    art = store.begin(STAGE, STAGE_VERSION, key_config, inputs, force=force,
                      description=f"{p.task} pixels {config.size}x{config.size} camera {camera} ({profile})")
    if art.complete:
        v = art.manifest.get("verification") or {}
        if config.verify and v.get("status") == "skipped" and v.get("reason") == "--no-verify":
            # cached pixels made with --no-verify: check the probes now (cheap) and record the result
            verification = R.verify_probes(attrs, ds.array("data/physics_state"))
            art.update(verification=verification)
            _warn_mismatch(ds.path, verification)
        return art
    try:
        return _render(art, config, ds, p.task, camera, profile, progress, executor)
    finally:
        art.release()


def _render(art: Artifact, config: RenderConfig, ds: Any, task: str, camera: str, profile: str,
            progress: bool, executor: Any = None) -> Artifact:
    t_start = time.perf_counter()
    out = art.path / DATASET_NAME
    size = config.size
    driver = R.cached_renderer(task, size, camera, profile)  # made and checked in run()
    backend = R.gl_backend(driver)
    pool: _WorkerPool | None = None
    if executor is None and config.workers > 1 and not (out.is_dir() and _has_camera(out, camera, ds.num_episodes)):
        # start the workers now: their imports and GL contexts overlap the verification and the copy
        pool = _WorkerPool(min(config.workers, ds.num_episodes), config.lp_threads, (task, size, camera, profile))
    try:
        return _render_body(art, config, ds, task, camera, profile, progress, out, backend, pool, t_start, executor)
    finally:
        if pool is not None:
            pool.close()


def _render_body(art: Artifact, config: RenderConfig, ds: Any, task: str, camera: str, profile: str,
                 progress: bool, out: Path, backend: str, pool: "_WorkerPool | None",
                 t_start: float, executor: Any = None) -> Artifact:
    from cdred_pipeline.datasets import RgbWriter, open_dataset

    size = config.size

    # ---------------------------------------------------------------- verification, before the long run
    verification: dict[str, Any] = {"status": "skipped", "reason": "--no-verify", "checks": []}
    if config.verify:
        phys = ds.array("data/physics_state")

        def reference(probe: Mapping[str, Any], step: int) -> np.ndarray | None:
            cam_key = f"data/rgb/{probe.get('camera')}"
            if cam_key in ds.group and tuple(ds.group[cam_key].shape[1:3]) == (probe.get("size"),) * 2:
                return np.asarray(ds.group[cam_key][step])
            return None

        verification = R.verify_probes(ds.attrs, phys, reference=reference)
        _warn_mismatch(ds.path, verification)
    art.update(verification=verification)

    # ---------------------------------------------------------------- the work units
    lengths = ds.lengths
    E = ds.num_episodes
    workers = config.workers if executor is None else int(executor.workers)
    chunk = config.chunk_episodes or _auto_chunk(lengths, workers)
    settings = {"task": task, "size": size, "camera": camera, "render_profile": profile, "gl_backend": backend,
                "versions": R.simulator_versions()}
    array_attrs = {**settings, "source": art.manifest.get("inputs", {})}
    # attrs.env says how to make the online env that shows these pixels: make_env(task, obs="rgb",
    # image_size=size, camera=camera, render_profile=profile)
    root_attrs = {"render": {camera: array_attrs},
                  "env": {"image_size": size, "camera": camera, "render_profile": profile}}
    parts_dir = art.path / "parts"
    frames_total = int(ds.num_steps + E)
    meter = _Meter()
    t_render = t_start  # the render phase includes the worker start-up, the verification and the copy
    lp_used: str | None = os.environ.get("LP_NUM_THREADS")
    if out.is_dir() and _has_camera(out, camera, E):
        pass  # an earlier run finished the dataset and was killed before completing the artifact
    else:
        writer = RgbWriter(ds.path, out, camera, attrs=array_attrs, root_attrs=root_attrs, overwrite=True)
        try:
            done = writer.num_episodes
            if executor is not None:
                lp_used = _render_units(art, writer, ds, task, size, camera, profile, chunk, done,
                                        config, parts_dir, progress, meter, executor) or lp_used
            elif pool is None:
                _render_inline(art, writer, ds, task, size, camera, profile, chunk, done, progress, meter)
            else:
                _render_pool(art, writer, ds, task, size, camera, profile, chunk, done,
                             config, parts_dir, progress, meter, pool)
                lp_used = pool.lp_used
            writer.close()
        except BaseException:
            writer.abort()
            raise
    render_s = time.perf_counter() - t_render
    shutil.rmtree(parts_dir, ignore_errors=True)
    for stale in art.path.glob(f".{DATASET_NAME}.lock"):
        stale.unlink(missing_ok=True)

    # ---------------------------------------------------------------- the written frames at the probe steps
    result = open_dataset(out)
    if config.verify and verification.get("checks"):
        rgb = result.group[f"data/rgb/{camera}"]
        wrong = [c["step"] for c in verification["checks"]
                 if c["size"] == size and c["camera"] == camera and c["render_profile"] == profile and c["row_matches"]
                 and R.frame_sha256(np.asarray(rgb[c["step"]])) != c["got"]]
        if wrong:
            verification["status"] = "mismatch"
            verification["written_mismatch"] = f"written frames at steps {wrong} differ from a fresh re-render"
            warnings.warn(f"{out}: {verification['written_mismatch']}", RenderMismatchWarning, stacklevel=2)

    # ---------------------------------------------------------------- contact sheet
    sheet = R.contact_sheet(lambda i: _episode_frames(result, camera, i), E,
                            art.path / f"contact_sheet_{camera}.png")

    rendered = meter.frames
    fps = rendered / render_s if rendered and render_s > 0 else None
    steady = meter.steady_fps()
    runs = list(art.manifest.get("render_runs", []))
    execution = {"executor": "render-pool" if executor is None and workers > 1 else
                 ("inline" if executor is None else executor.kind),
                 "workers": workers if executor is None else int(executor.workers)}  # Ray: the cluster's CPUs
    runs.append({"frames_rendered": rendered, "render_s": round(render_s, 3), **execution,
                 "fps": None if fps is None else round(fps, 1), "fps_steady": None if steady is None else round(steady, 1),
                 "chunk_episodes": chunk, "lp_threads": lp_used})
    headline = {"frames": frames_total, "fps": None if fps is None else round(fps, 1),
                "verify": verification["status"]}
    return art.complete_with(
        headline=headline, verification=verification, render_runs=runs, dataset=str(DATASET_NAME),
        contact_sheet=sheet.name,
        render={**settings, **execution, "chunk_episodes": chunk, "episodes": E,
                "steps": int(ds.num_steps), "frames": frames_total, "source_path": str(ds.path.resolve())},
        timings={"render_s": round(render_s, 3), "total_s": round(time.perf_counter() - t_start, 3)},
    )


def _warn_mismatch(path: Path, verification: Mapping[str, Any]) -> None:
    if verification.get("status") == "mismatch":
        warnings.warn(f"{path}: {R.describe_verification(verification)}", RenderMismatchWarning, stacklevel=3)


def _has_camera(path: Path, camera: str, episodes: int) -> bool:
    from cdred_pipeline.datasets import open_dataset

    try:
        ds = open_dataset(path)
    except DatasetError:
        return False
    return camera in ds.cameras and ds.num_episodes == episodes


def _episode_frames(ds: Any, camera: str, i: int) -> np.ndarray:
    s, e = int(ds.episode_starts[i]), int(ds.episode_ends[i])
    frames = np.asarray(ds.group[f"data/rgb/{camera}"][s:e])
    final = np.asarray(ds.group[f"meta/final_rgb/{camera}"][i])
    return np.concatenate([frames, final[None]])


def _progress_bar(total: int, initial: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="frame", unit_scale=False, desc=desc, disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)


def _unit_delay() -> None:
    delay = os.environ.get(UNIT_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


class _Meter:
    """Frames rendered in this run, and the steady rate: frames after the first report over the time
    from the first report to the last (leaves out worker start-up: spawn, imports, GL context)."""

    def __init__(self) -> None:
        self.frames = 0
        self._first: tuple[float, int] | None = None
        self._last = 0.0

    def add(self, n: int) -> None:
        self.frames += int(n)
        self._last = time.perf_counter()
        if self._first is None:
            self._first = (self._last, self.frames)

    def steady_fps(self) -> float | None:
        if self._first is None or self._last <= self._first[0]:
            return None
        return (self.frames - self._first[1]) / (self._last - self._first[0])


def _render_inline(art: Artifact, writer: Any, ds: Any, task: str, size: int, camera: str, profile: str,
                   chunk: int, done: int, progress: bool, meter: _Meter) -> None:
    """One worker, in this process: render each range straight into the writer; a range is a unit once
    the writer has flushed it."""
    E = ds.num_episodes
    ends, starts, lengths = ds.episode_ends, ds.episode_starts, ds.lengths
    r = R.cached_renderer(task, size, camera, profile)
    phys, final = ds.array("data/physics_state"), ds.array("meta/final_physics_state")
    initial = int(ends[done - 1] + done) if done else 0
    with _progress_bar(int(ds.num_steps + E), initial, progress, f"render {task} {size}px") as bar:
        for a, b in _split(done, E, chunk):
            t0 = time.perf_counter()
            states = np.asarray(phys[int(starts[a]):int(ends[b - 1])], dtype=np.float64)
            finals = np.asarray(final[a:b], dtype=np.float64)
            off = 0
            for i in range(a, b):
                n = int(lengths[i])
                frames = np.empty((n + 1, size, size, 3), dtype=np.uint8)
                for t in range(n):
                    frames[t] = r.render(states[off + t])
                frames[n] = r.render(finals[i - a])
                off += n
                writer.append_episode(frames)
                meter.add(n + 1)
                bar.update(n + 1)
            writer.flush()
            art.record_unit(_unit_name(a, b), start=a, end=b, frames=int(off + b - a),
                            seconds=round(time.perf_counter() - t0, 3), pid=os.getpid())
            _unit_delay()


class _Parts:
    """The part stores of one run: which ranges still need rendering, and the in-order merge.

    On construction, ranges recorded by an earlier run whose parts are still on disk (finished but not
    yet merged when it was killed) are reused; half-written and unrecorded parts are deleted.
    :meth:`add` records a finished range as a unit (its part is durable) and :meth:`merge` appends
    every part that continues the output, in episode order, then deletes it.
    """

    def __init__(self, art: Artifact, writer: Any, ds: Any, chunk: int, done: int, parts_dir: Path) -> None:
        self.art, self.writer, self.parts_dir = art, writer, parts_dir
        self.E = ds.num_episodes
        self.ends, self.starts, self.lengths = ds.episode_ends, ds.episode_starts, ds.lengths
        parts_dir.mkdir(exist_ok=True)
        for junk in parts_dir.glob(".*.tmp*"):  # half-written parts of a killed run
            shutil.rmtree(junk, ignore_errors=True)
        self.ready: dict[int, tuple[int, Path]] = {}
        for info in (art.manifest.get("unit_info") or {}).values():
            a, b = int(info.get("start", -1)), int(info.get("end", -1))
            part = parts_dir / str(info.get("part", ""))
            if b > done and a >= 0 and info.get("part") and part.is_dir() and _part_ok(part, self.ends, self.starts, a, b):
                self.ready[a] = (b, part)
        keep = {q for _, q in self.ready.values()}
        for leftover in parts_dir.glob("*.zarr"):  # finished by a killed run but never recorded (or merged)
            if leftover not in keep:
                shutil.rmtree(leftover, ignore_errors=True)
        self.todo: list[tuple[int, int]] = []
        cursor = done
        for a in sorted(self.ready):
            if a > cursor:
                self.todo += _split(cursor, a, chunk)
            cursor = max(cursor, self.ready[a][0])
        self.todo += _split(cursor, self.E, chunk)
        self.merged = done
        #: frames already rendered (merged before, or waiting in reused parts): the progress bar's start
        self.initial = int(self.ends[done - 1] + done) if done else 0
        self.initial += sum(int(self.ends[b - 1] - self.starts[a]) + (b - a) for a, (b, _) in self.ready.items())

    def part_path(self, a: int, b: int) -> str:
        return str(self.parts_dir / f"{_unit_name(a, b)}.zarr")

    def add(self, res: Mapping[str, Any]) -> None:
        """A range finished (``res``: the summary of :func:`cdred_pipeline.render.render_range`)."""
        self.art.record_unit(_unit_name(res["start"], res["end"]), **res)
        self.ready[int(res["start"])] = (int(res["end"]), self.parts_dir / res["part"])

    def merge(self) -> None:
        """Append every ready part that continues the output (episode order), flush, delete it."""
        while True:
            hit = next(((a, b, q) for a, (b, q) in self.ready.items() if a <= self.merged < b), None)
            if hit is None:
                return
            a, b, part = hit
            arr = R.read_part(part)
            off = int(self.starts[self.merged] - self.starts[a]) + (self.merged - a)  # rows before `merged`
            for i in range(self.merged, b):
                n = int(self.lengths[i])
                self.writer.append_episode(np.asarray(arr[off:off + n + 1]))
                off += n + 1
            self.writer.flush()
            self.merged = b
            del self.ready[a]
            shutil.rmtree(part, ignore_errors=True)

    def check_complete(self) -> None:
        if self.merged != self.E:
            raise CdredError(f"render-visual: merged {self.merged} of {self.E} episodes (parts missing); rerun to resume")


def _render_pool(art: Artifact, writer: Any, ds: Any, task: str, size: int, camera: str, profile: str,
                 chunk: int, done: int, config: RenderConfig, parts_dir: Path,
                 progress: bool, meter: _Meter, pool: "_WorkerPool") -> None:
    """Several workers: a spawn pool renders ranges into part stores; the driver records each finished
    range as a unit and merges parts into the writer in episode order (then deletes them)."""
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    E = ds.num_episodes
    parts = _Parts(art, writer, ds, chunk, done, parts_dir)
    q = pool.queue

    def drain(bar: Any) -> None:
        while True:
            try:
                n = q.get_nowait()
            except queue_mod.Empty:
                return
            meter.add(int(n))
            bar.update(int(n))

    jobs = [R.RangeJob(str(ds.path.resolve()), a, b, parts.part_path(a, b), task, size, camera, profile)
            for a, b in parts.todo]
    with _progress_bar(int(ds.num_steps + E), parts.initial, progress, f"render {task} {size}px x{config.workers}") as bar:
        parts.merge()
        try:
            pending = {pool.executor.submit(R.render_range, j) for j in jobs}
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                drain(bar)
                for fut in finished:
                    try:
                        res = fut.result()
                    except BrokenProcessPool as exc:
                        raise CdredError(f"a render worker died ({exc}); finished ranges are kept: rerun to "
                                         "resume, or use --workers 1 to see the error in this process") from exc
                    parts.add(res)
                    _unit_delay()
                parts.merge()
            drain(bar)
            parts.merge()
        except BaseException:
            pool.executor.shutdown(wait=False, cancel_futures=True)
            raise
    parts.check_complete()


# ------------------------------------------------------------------------ ranges as executor units
@dataclass(frozen=True)
class RangeUnit:
    """One executor unit of render-visual: render ``job`` (episodes [start, end) of the input into a
    part store). ``lp_threads``: llvmpipe threads for a worker whose GL context is not made yet
    (None = leave LP_NUM_THREADS alone); never changes pixels."""

    job: R.RangeJob
    lp_threads: int | None = None


def render_unit(unit: RangeUnit) -> dict[str, Any]:
    """Executor unit (module level: it travels to spawned processes and Ray workers by reference).

    Checks that this worker sees the input dataset and the artifact's parts folder (a one-line
    CdredError, never retried, when a Ray node lacks the shared storage), renders the range with
    :func:`cdred_pipeline.render.render_range` (one cached GL context per worker process) into a
    temporary part renamed when complete, and returns its summary (start, end, frames, part name,
    seconds, pid, host): no frames travel back, so the driver's memory stays bounded.
    """
    import socket

    job = unit.job
    part = Path(job.part)
    for what, folder in (("input dataset", Path(job.dataset)), ("artifact parts folder", part.parent)):
        if not folder.is_dir():
            raise CdredError(f"render-visual worker on {socket.gethostname()}: the {what} {folder} is not visible "
                             "here; with a multi-node Ray cluster the dataset and --workdir must be on storage every "
                             "node sees")
    if unit.lp_threads is not None and "LP_NUM_THREADS" not in os.environ:
        os.environ["LP_NUM_THREADS"] = str(int(unit.lp_threads))  # read when the GL context is made
    tmp = part.with_name(f".{part.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a failed earlier attempt in this same worker process
    try:
        res = R.render_range(job)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**res, "host": socket.gethostname()}


def _render_units(art: Artifact, writer: Any, ds: Any, task: str, size: int, camera: str, profile: str,
                  chunk: int, done: int, config: RenderConfig, parts_dir: Path, progress: bool,
                  meter: _Meter, executor: Any) -> str | None:
    """The ranges as units of ``executor``: each unit writes a part store; as each result arrives the
    driver records the unit and merges the parts that continue the output (episode order). A unit that
    fails after its retries is raised once the others finished, with every finished range recorded
    (merged or kept as a part) for the rerun. Returns the LP_NUM_THREADS the workers were given."""
    parts = _Parts(art, writer, ds, chunk, done, parts_dir)
    parts.merge()
    lp: int | None = None
    if executor.kind != "local":  # workers make their own GL contexts: a fair share of llvmpipe threads
        env_lp = os.environ.get("LP_NUM_THREADS")
        if env_lp:
            lp = int(env_lp)
        elif config.lp_threads is not None:
            lp = config.lp_threads
        elif executor.kind == "ray":
            lp = 1  # one CPU per Ray task
        else:
            lp = max(1, (os.cpu_count() or 1) // max(1, int(executor.workers)))
    units = [RangeUnit(R.RangeJob(str(ds.path.resolve()), a, b, parts.part_path(a, b), task, size, camera, profile), lp)
             for a, b in parts.todo]

    def on_result(_: int, res: dict[str, Any]) -> None:
        parts.add(res)
        meter.add(int(res["frames"]))
        parts.merge()
        _unit_delay()

    executor.map(render_unit, units, desc=f"render {task} {size}px ({executor.kind}, ranges)",
                 progress=progress, on_result=on_result)
    parts.merge()
    parts.check_complete()
    return None if lp is None else str(lp)


class _WorkerPool:
    """A spawn-context process pool whose workers start at once, each with its GL context ready
    (``warm`` = task, size, camera, profile), report frames on :attr:`queue`, and die with the driver."""

    def __init__(self, workers: int, lp_threads: int | None, warm: tuple[str, int, str, str]) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        lp = lp_threads if lp_threads is not None else max(1, (os.cpu_count() or 1) // workers)
        self.lp_used: str | None = os.environ.get("LP_NUM_THREADS", str(lp))
        ctx = mp.get_context("spawn")
        self.queue = ctx.Queue()
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=R.init_worker,
                                            initargs=(self.queue, lp, warm))
        for _ in range(workers):  # each submit with no idle worker spawns one: all start now
            self.executor.submit(os.getpid)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.queue.close()


def _part_ok(part: Path, ends: np.ndarray, starts: np.ndarray, a: int, b: int) -> bool:
    """A part store exists and holds exactly the frames of episodes [a, b)."""
    try:
        arr = R.read_part(part)
    except Exception:  # any zarr/IO error means the part cannot be trusted: re-render the range
        return False
    return int(arr.shape[0]) == int(ends[b - 1] - starts[a]) + (b - a)


def summary_line(art: Artifact, *, cached: bool = False) -> str:
    """What the CLI prints after a run: artifact path, frames, fps and the verification result."""
    m = art.manifest
    head = m.get("headline") or {}
    runs = m.get("render_runs") or []
    last = runs[-1] if runs else {}
    fps, steady = last.get("fps"), last.get("fps_steady")
    if cached:
        done = "cached: nothing rendered now"
    else:
        done = f"{last.get('frames_rendered', 0)} rendered now"
    rate = "n/a" if fps is None else f"{fps:.1f} frames/s over the render phase"
    if steady is not None:
        rate += f" ({steady:.1f} steady)"
    v = R.describe_verification(m.get("verification") or {"status": "skipped", "reason": "not recorded"})
    where = f" ({last['executor']})" if last.get("executor") not in (None, "inline", "render-pool") else ""
    return (f"{art.path / DATASET_NAME}\nframes: {head.get('frames')} ({done}); {rate}; workers "
            f"{last.get('workers')}{where}\nverify: {v}")
