"""`cdred render-visual`: render stored expert states into a pixel dataset, in parallel, verified
(paper §4.3; docs/design.md §2, §5, §6, §7).

The paper's visual datasets are state-based expert trajectories whose observations are replaced by
RGB images rendered from the stored states (§4.3). :func:`run` restores every ``data/physics_state``
row (and every ``meta/final_physics_state``) in a fresh environment of the dataset's task and renders
it exactly as ``make_env(task, obs="rgb")`` does online (same renderer, camera, size and render
profile), so an agent trained on rendered demos sees the pixels it will see online. The frames go
into a NEW dataset inside the artifact folder (``<workdir>/render-visual/<key>/demos.zarr``: a copy
of the input with ``data/rgb/<camera>`` (N, H, W, 3) and ``meta/final_rgb/<camera>`` (E, H, W, 3)
added); the input is never modified. Frame stacking is the reader's job
(:func:`cdred_pipeline.datasets.load_episodes`), not stored.

Work is split into episode ranges, the units of an executor (:mod:`cdred_pipeline.executor`, as in
every stage: ``--workers N`` local processes, or Ray with ``--ray-address``). Each unit
(:func:`render_unit`) reads its states from the input dataset's absolute path, writes its frames as
a part store under the artifact's ``.partial/parts`` folder (so on a multi-node Ray cluster the
dataset and ``--workdir`` must be on storage every node sees) and returns only a summary; the driver
records the unit and appends the parts in episode order with one writer, so memory stays bounded by
one range. A range is recorded as a finished unit in the manifest only once its frames are durable,
so a killed run (or a lost worker, or a unit that fails after its retries) resumes from the recorded
ranges. The result does not depend on the executor, the number of workers or the range size
(bitwise; tested), so none of them is part of the cache key.

Verification (``verify``): the probe frames hashed at collection time (``attrs.sim.probe``, see
:func:`cdred_pipeline.render.probe_frames`) are re-rendered here and compared before the long run; a
mismatch (other GL backend, other simulator version) is reported with its PSNR and the versions in
the manifest and as a :class:`RenderMismatchWarning`, never silently accepted. After the run, the
frames written at the probe steps are checked against the same hashes when the settings agree.
"""

from __future__ import annotations

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
from cdred_pipeline.datasets import RgbWriter, check_readable, open_dataset
from cdred_pipeline.envs import RENDER_PROFILES, ParsedTask, default_camera, parse_task, task_available
from cdred_pipeline.errors import CdredError, DatasetError, MissingDependencyError, UsageError
from cdred_pipeline.executor import Executor, executor_for
from cdred_pipeline.presets import RENDER_PRESETS
from cdred_pipeline.stages.common import artifact_of, hash_files
from cdred_pipeline.stages.common import dataset_path as resolve_dataset

__all__ = ["STAGE", "STAGE_VERSION", "DATASET_NAME", "RenderConfig", "PRESETS", "RenderMismatchWarning",
           "run", "resolve_dataset", "dataset_identity", "summary_line", "RangeUnit", "render_unit", "unit_name"]

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


class AlreadyRenderedWarning(UserWarning):
    """The input already holds the camera's frames: they are rendered again into a new dataset."""


@dataclass(frozen=True)
class RenderConfig:
    """Settings of render-visual. Only ``size``, ``camera`` and ``render_profile`` change the pixels
    (they form the cache key with the input dataset's identity); the rest is how the work is done.

    Attributes:
        size: image side in pixels, 16-512 (64 = TD-MPC2's and make_env's default).
        camera: camera name or id; None = the task's default camera (what make_env uses online).
        workers: render processes when :func:`run` gets no executor (1 = this process; >1 = a pool of
            spawned processes, one GL context each): the executor of ``--workers``.
        render_profile: ``"fast"`` or ``"default"``; None = the dataset's own (attrs.env.render_profile,
            else the probe's, else ``"fast"``): the profile must be the one used online.
        verify: re-render the collection-time probe frames and compare their hashes.
        chunk_episodes: episodes per work unit (range); 0 = auto (about 4 ranges per worker).
        lp_threads: llvmpipe threads per worker process of a process pool (None = cores // workers;
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
        if self.render_profile is not None and self.render_profile not in RENDER_PROFILES:
            raise UsageError(f"render_profile must be one of {', '.join(RENDER_PROFILES)}, got {self.render_profile!r}")
        if self.camera is not None and (not str(self.camera) or "/" in str(self.camera)):
            raise UsageError(f"camera must be a camera name or id without '/', got {self.camera!r}")
        if self.lp_threads is not None and (not isinstance(self.lp_threads, int) or self.lp_threads < 0):
            raise UsageError(f"lp_threads must be a non-negative integer or None, got {self.lp_threads!r}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "RenderConfig":
        """A named preset (:data:`cdred_pipeline.presets.RENDER_PRESETS`) with fields replaced by ``overrides``."""
        if name not in RENDER_PRESETS:
            raise UsageError(f"unknown render preset {name!r}: use one of {', '.join(RENDER_PRESETS)}")
        return cls(**{**RENDER_PRESETS[name], **overrides})


#: The render presets as configs (the data lives in :mod:`cdred_pipeline.presets`).
PRESETS: dict[str, RenderConfig] = {name: RenderConfig(**over) for name, over in RENDER_PRESETS.items()}


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


def camera_of(config: RenderConfig, task: ParsedTask) -> str:
    """The camera name written to ``data/rgb/<camera>``: the configured one or the task's default."""
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


def unit_name(a: int, b: int) -> str:
    """The manifest name of the unit (range) of episodes [a, b)."""
    return f"ep{a:06d}-{b:06d}"


# ------------------------------------------------------------------------------------------- run
def run(config: RenderConfig, dataset_path: str | os.PathLike, store: ArtifactStore, *, force: bool = False,
        progress: bool = True, executor: Executor | None = None) -> Artifact:
    """Render every stored state of ``dataset_path`` into a new cached pixel dataset (see module docstring).

    ``executor`` runs the episode ranges (the caller owns it and closes it); None = the executor of
    ``config.workers`` (:func:`cdred_pipeline.executor.executor_for`: this process for 1, a pool of
    spawned processes for more), made here and closed at the end. Neither changes the pixels or the
    cache key.

    Returns the complete artifact; its folder holds ``demos.zarr`` and ``contact_sheet_<camera>.png``,
    its manifest ``headline`` (frames, fps, verify), ``render`` (settings, GL backend, executor,
    workers) and ``verification`` (per probe: expected/got hash, match, PSNR; versions recorded vs here).

    Raises:
        DatasetError: the input is not a dataset, has no episodes, or stores no physics states (pixels
            cannot be re-rendered without them), or its states do not fit this simulator.
        MissingDependencyError: the task's simulator is not usable here.
        UsageError: bad config values (size outside 16-512, unknown camera, ...).
    """
    path = Path(dataset_path)
    ds = open_dataset(path)
    task = _check_input(path, ds)
    camera = camera_of(config, task)
    _check_image_size(path, ds, camera, config.size)
    ok, why = task_available(task.task)
    if not ok:
        raise MissingDependencyError(f"{task.task}: cannot re-render this dataset here: {why}")
    pixels = _Pixels(task.task, config.size, camera, _resolve_profile(config, ds.attrs))
    key_config = {"size": pixels.size, "camera": camera, "render_profile": pixels.profile}
    inputs = dataset_identity(path, ds.attrs)
    if force or store.get(STAGE, artifact_key(STAGE, STAGE_VERSION, key_config, inputs)) is None:
        _check_renderer(ds, pixels)  # before any folder is made
        check_readable(path, keys=("data/physics_state", "meta/final_physics_state"))  # damaged states: one line
    art = store.begin(STAGE, STAGE_VERSION, key_config, inputs, force=force,
                      description=f"{pixels.task} pixels {pixels.size}x{pixels.size} camera {camera} ({pixels.profile})")
    if art.complete:
        return _verify_cached(art, config, ds)
    _warn_already_rendered(path, ds, camera, art)
    try:
        if executor is not None:
            return _RenderRun(art, config, ds, pixels, executor, progress).execute()
        with executor_for(config.workers, None) as owned:
            return _RenderRun(art, config, ds, pixels, owned, progress).execute()
    finally:
        art.release()


@dataclass(frozen=True)
class _Pixels:
    """What decides the pixels: task, image size, camera and render profile."""

    task: str
    size: int
    camera: str
    profile: str

    def renderer(self) -> R.StateRenderer:
        """This process's renderer of these pixels (one GL context, made on first use)."""
        return R.cached_renderer(self.task, self.size, self.camera, self.profile)


def _check_input(path: Path, ds: Any) -> ParsedTask:
    """The input's task; a one-line DatasetError when it names none, stores no states or no episodes."""
    task_id = (ds.attrs.get("env") or {}).get("task")
    if not task_id:
        raise DatasetError(f"{path}: attrs.env.task is missing: cannot tell which simulator renders these states")
    task = parse_task(str(task_id))
    if ds.physics_state_dim == 0:
        raise DatasetError(f"{path}: data/physics_state has 0 columns: pixels cannot be re-rendered because the "
                           "dataset stores no simulator states (e.g. imported without them); re-collect with "
                           "`cdred collect-experts` or import a file that carries the states")
    if ds.num_episodes == 0:
        raise DatasetError(f"{path}: has no episodes to render")
    return task


def _warn_already_rendered(path: Path, ds: Any, camera: str, art: Artifact) -> None:
    """Say (AlreadyRenderedWarning) that the input already holds ``camera``'s frames, which are rendered
    again from its states into a new dataset under another key (a check that they reproduce, or a waste)."""
    if camera in ds.cameras:
        h, w = ds.image_shape(camera)[:2]
        warnings.warn(f"{path} already holds camera {camera} at {h}x{w}: rendering it again from its states into a "
                      f"new dataset ({STAGE}/{art.key}); to learn from its frames, pass it as it is to "
                      "`cdred imitate --obs rgb`", AlreadyRenderedWarning, stacklevel=3)


def _check_image_size(path: Path, ds: Any, camera: str, size: int) -> None:
    """A dataset has one image size: refuse a size other than that of the cameras it holds."""
    others = {c: ds.image_shape(c)[:2] for c in ds.cameras if c != camera}
    clash = {c: hw for c, hw in others.items() if hw != (size, size)}
    if clash:
        c, (h, w) = next(iter(clash.items()))
        raise UsageError(f"{path}: already holds camera {c} at {h}x{w}; a dataset has one image size "
                         f"(attrs.env.image_size): render at --size {h}, or from a dataset without that camera")


def _check_renderer(ds: Any, pixels: _Pixels) -> None:
    """A fresh env here checks the camera, the state layout and the GL backend."""
    driver = pixels.renderer()
    driver.check_states(ds.physics_state_dim, str(ds.path))
    R.gl_backend(driver)


def _verify_cached(art: Artifact, config: RenderConfig, ds: Any) -> Artifact:
    """A cached artifact; pixels made with --no-verify get their probes checked now (cheap) and recorded."""
    v = art.manifest.get("verification") or {}
    if config.verify and v.get("status") == "skipped" and v.get("reason") == "--no-verify":
        verification = R.verify_probes(ds.attrs, ds.array("data/physics_state"))
        art.update(verification=verification)
        _warn_mismatch(ds.path, verification)
    return art


def _verify_before(config: RenderConfig, ds: Any) -> dict[str, Any]:
    """Re-render the collection-time probes (rgb frames the dataset holds serve as PSNR references)."""
    if not config.verify:
        return {"status": "skipped", "reason": "--no-verify", "checks": []}

    def reference(probe: Mapping[str, Any], step: int) -> np.ndarray | None:
        cam_key = f"data/rgb/{probe.get('camera')}"
        if cam_key in ds.group and tuple(ds.group[cam_key].shape[1:3]) == (probe.get("size"),) * 2:
            return np.asarray(ds.group[cam_key][step])
        return None

    verification = R.verify_probes(ds.attrs, ds.array("data/physics_state"), reference=reference)
    _warn_mismatch(ds.path, verification)
    return verification


def _lp_threads(config: RenderConfig, executor: Executor) -> int | None:
    """LP_NUM_THREADS for workers that make their own GL contexts (a fair share of llvmpipe threads);
    None in this process (left as it is)."""
    if executor.kind == "local":
        return None
    if os.environ.get("LP_NUM_THREADS"):
        return int(os.environ["LP_NUM_THREADS"])
    if config.lp_threads is not None:
        return config.lp_threads
    if executor.kind == "ray":
        return 1  # one CPU per Ray task
    return max(1, (os.cpu_count() or 1) // max(1, int(executor.workers)))


class _RenderRun:
    """One render of an artifact: verify, run the ranges on the executor, check the written frames,
    write the contact sheet and the manifest."""

    def __init__(self, art: Artifact, config: RenderConfig, ds: Any, pixels: _Pixels, executor: Executor,
                 progress: bool) -> None:
        self.art, self.config, self.ds, self.pixels = art, config, ds, pixels
        self.executor, self.progress = executor, progress
        self.t_start = time.perf_counter()  # the render phase includes verification and worker start-up
        self.out = art.path / DATASET_NAME
        self.parts_dir = art.path / "parts"
        self.meter = _Meter()
        self.chunk = config.chunk_episodes or _auto_chunk(ds.lengths, int(executor.workers))

    def execute(self) -> Artifact:
        """The whole render (see the class docstring); returns the completed artifact."""
        p = self.pixels
        settings = {"task": p.task, "size": p.size, "camera": p.camera, "render_profile": p.profile,
                    "gl_backend": R.gl_backend(p.renderer()), "versions": R.simulator_versions()}
        verification = _verify_before(self.config, self.ds)
        self.art.update(verification=verification)
        lp = os.environ.get("LP_NUM_THREADS")
        if not (self.out.is_dir() and _has_camera(self.out, p.camera, self.ds.num_episodes)):
            lp = self._write(settings) or lp  # else: an earlier run wrote it all and was killed before completing
        render_s = time.perf_counter() - self.t_start
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        for stale in self.art.path.glob(f".{DATASET_NAME}.lock"):
            stale.unlink(missing_ok=True)
        result = open_dataset(self.out)
        self._verify_written(result, verification)
        sheet = R.contact_sheet(lambda i: _episode_frames(result, p.camera, i), self.ds.num_episodes,
                                self.art.path / f"contact_sheet_{p.camera}.png")
        return self._complete(settings, verification, sheet, render_s, lp)

    def _write(self, settings: dict[str, Any]) -> str | None:
        """Render every range not written yet into the output; returns the LP_NUM_THREADS of the workers."""
        p = self.pixels
        array_attrs = {**settings, "source": self.art.manifest.get("inputs", {})}
        # attrs.env says how to make the online env that shows these pixels: make_env(task, obs="rgb",
        # image_size=size, camera=camera, render_profile=profile)
        root_attrs = {"render": {p.camera: array_attrs},
                      "env": {"image_size": p.size, "camera": p.camera, "render_profile": p.profile}}
        writer = RgbWriter(self.ds.path, self.out, p.camera, attrs=array_attrs, root_attrs=root_attrs, overwrite=True)
        try:
            lp = self._run_units(writer)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        return None if lp is None else str(lp)

    def _run_units(self, writer: Any) -> int | None:
        """The ranges as units of the executor: each writes a part store; as each result arrives the
        driver records the unit and merges the parts that continue the output (episode order). A unit
        that fails after its retries is raised once the others finished, with every finished range
        recorded (merged or kept as a part) for the rerun."""
        p, ex = self.pixels, self.executor
        parts = _Parts(self.art, writer, self.ds, self.chunk, writer.num_episodes, self.parts_dir)
        parts.merge()
        lp = _lp_threads(self.config, ex)
        dataset = str(self.ds.path.resolve())
        units = [RangeUnit(R.RangeJob(dataset, a, b, parts.part_path(a, b), p.task, p.size, p.camera, p.profile),
                           lp, os.getpid()) for a, b in parts.todo]

        def on_result(_: int, res: dict[str, Any]) -> None:
            parts.add(res)
            self.meter.add(int(res["frames"]))
            parts.merge()
            parts.record(res)
            _unit_delay()

        ex.map(render_unit, units, desc=f"render {p.task} {p.size}px ({ex.kind}, ranges)", progress=self.progress,
               on_result=on_result)
        parts.merge()
        parts.check_complete()
        return lp

    def _verify_written(self, result: Any, verification: dict[str, Any]) -> None:
        """The written frames at the probe steps must hash as the fresh re-render did (same settings)."""
        if not (self.config.verify and verification.get("checks")):
            return
        p = self.pixels
        rgb = result.group[f"data/rgb/{p.camera}"]
        wrong = [c["step"] for c in verification["checks"]
                 if c["size"] == p.size and c["camera"] == p.camera and c["render_profile"] == p.profile
                 and c["row_matches"] and R.frame_sha256(np.asarray(rgb[c["step"]])) != c["got"]]
        if wrong:
            verification["status"] = "mismatch"
            verification["written_mismatch"] = f"written frames at steps {wrong} differ from a fresh re-render"
            warnings.warn(f"{self.out}: {verification['written_mismatch']}", RenderMismatchWarning, stacklevel=2)

    def _complete(self, settings: dict[str, Any], verification: dict[str, Any], sheet: Path, render_s: float,
                  lp: str | None) -> Artifact:
        """Record this run (frames, rates, executor) and complete the artifact."""
        ds, rendered = self.ds, self.meter.frames
        frames_total = int(ds.num_steps + ds.num_episodes)
        fps = round(rendered / render_s, 1) if rendered and render_s > 0 else None
        steady = self.meter.steady_fps()
        execution = {"executor": self.executor.kind, "workers": int(self.executor.workers)}  # Ray: the cluster's CPUs
        runs = [*self.art.manifest.get("render_runs", []),
                {"frames_rendered": rendered, "render_s": round(render_s, 3), **execution, "fps": fps,
                 "fps_steady": None if steady is None else round(steady, 1), "chunk_episodes": self.chunk,
                 "lp_threads": lp}]
        return self.art.complete_with(
            headline={"frames": frames_total, "fps": fps, "verify": verification["status"]},
            verification=verification, render_runs=runs, dataset=str(DATASET_NAME), contact_sheet=sheet.name,
            render={**settings, **execution, "chunk_episodes": self.chunk, "episodes": ds.num_episodes,
                    "steps": int(ds.num_steps), "frames": frames_total, "source_path": str(ds.path.resolve())},
            timings={"render_s": round(render_s, 3), "total_s": round(time.perf_counter() - self.t_start, 3)},
        )


# ------------------------------------------------------------------------ ranges as executor units
@dataclass(frozen=True)
class RangeUnit:
    """One executor unit of render-visual: render ``job`` (episodes [start, end) of the input into a
    part store). ``lp_threads``: llvmpipe threads for a worker whose GL context is not made yet
    (None = leave LP_NUM_THREADS alone); never changes pixels. ``driver_pid``: the process that
    records the units (a worker it spawned dies with it, :func:`cdred_pipeline.render.die_with_driver`)."""

    job: R.RangeJob
    lp_threads: int | None = None
    driver_pid: int | None = None


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
    if unit.driver_pid is not None:
        R.die_with_driver(unit.driver_pid)
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


# ------------------------------------------------------------------------------------- helpers
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


class _Parts:
    """The part stores of one run: which ranges still need rendering, and the in-order merge.

    On construction, ranges recorded by an earlier run whose parts are still on disk (finished but not
    yet merged when it was killed) are reused; half-written and unrecorded parts are deleted.
    :meth:`add` takes a finished range (its part is durable), :meth:`merge` appends every part that
    continues the output, in episode order, then deletes it, and :meth:`record` records the range as
    a finished unit: after the merge, so that a kill never lands between the record and the flush of
    the frames it stands for.
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
        return str(self.parts_dir / f"{unit_name(a, b)}.zarr")

    def add(self, res: Mapping[str, Any]) -> None:
        """A range finished (``res``: the summary of :func:`cdred_pipeline.render.render_range`)."""
        self.ready[int(res["start"])] = (int(res["end"]), self.parts_dir / res["part"])

    def record(self, res: Mapping[str, Any]) -> None:
        """Record a finished range as a unit of the artifact (merged, or its part kept for a rerun)."""
        self.art.record_unit(unit_name(res["start"], res["end"]), **res)

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


def _warn_mismatch(path: Path, verification: Mapping[str, Any]) -> None:
    if verification.get("status") == "mismatch":
        warnings.warn(f"{path}: {R.describe_verification(verification)}", RenderMismatchWarning, stacklevel=3)


def _has_camera(path: Path, camera: str, episodes: int) -> bool:
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
    where = f" ({last['executor']})" if last.get("executor") not in (None, "local") else ""
    sheet = m.get("contact_sheet")
    return (f"{art.path / DATASET_NAME}\nframes: {head.get('frames')} ({done}); {rate}; workers "
            f"{last.get('workers')}{where}\nverify: {v}" + (f"\ncontact sheet: {art.path / sheet}" if sheet else ""))
