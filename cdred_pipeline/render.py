"""Exact re-rendering of stored simulator states (paper §4.3; docs/design.md §2, §6).

The paper builds its visual datasets by rendering RGB observations from the stored states of
state-based expert trajectories ("we render visual observations based on state-based expert
trajectories, replacing the original state-based observations", §4.3). This module holds the pieces
the ``render-visual`` stage and the collection stage share:

* :class:`StateRenderer`: a fresh environment of a task that turns a stored ``physics_state`` into
  the frame the online pixel env (``make_env(task, obs="rgb")``) shows for that state, bitwise.
* :func:`probe_frames`: hashes of a few probe frames, stored at collection time in
  ``attrs.sim.probe`` so that a later re-render can prove it reproduces the collection-time pixels.
* :func:`verify_probes`: re-render the probes and compare; a mismatch (other GL backend, other
  simulator version) is reported with its PSNR and the versions on both sides.
* :func:`contact_sheet`: a PNG grid of frames from a few episodes, for a person to look at.
* :func:`render_range`: the work of one render-visual unit (one episode range -> one part store).

Pixels do not depend on llvmpipe's thread count (``LP_NUM_THREADS``; checked bitwise at 64, 200 and
512 px for dmc and Meta-World, both render profiles), so worker processes may set it to share the CPU
cores without changing a single pixel.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import math
import os
import shutil
import signal
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.errors import CdredError, DatasetError, MissingDependencyError, UsageError
from cdred_pipeline.vector import TrajectoryRecorder

__all__ = [
    "MAX_SIZE", "MIN_SIZE", "PROBE_FORMAT", "PartWriter", "RangeJob", "StateRenderer", "cached_renderer",
    "camera_name", "check_size", "contact_sheet", "decode_frame", "default_probe_steps", "describe_verification",
    "die_with_driver", "encode_frame", "frame_sha256", "gl_backend", "probe_frames", "probes_of", "psnr",
    "read_part", "render_range", "simulator_versions", "verify_probes", "write_random_dataset",
]

MIN_SIZE = 16
"""Smallest image side accepted by render-visual."""
MAX_SIZE = 512
"""Largest image side accepted by render-visual (above this a 500-step episode is > 390 MB of pixels)."""
PROBE_FORMAT = 1
"""Version of the probe record layout (``attrs.sim.probe``)."""
PROBE_FRAMES_MAX_SIZE = 128
"""Probe records keep the probe frames themselves (zlib, base64) up to this size, for PSNR on mismatch."""


# ----------------------------------------------------------------------------------- small helpers
def check_size(size: Any) -> int:
    """``size`` as an int in [MIN_SIZE, MAX_SIZE]; a one-line UsageError otherwise."""
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
        raise UsageError(f"image size must be an integer in {MIN_SIZE}-{MAX_SIZE}, got {size!r}")
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise UsageError(f"image size {size} is outside {MIN_SIZE}-{MAX_SIZE}: pick a size in that range (64 is TD-MPC2's)")
    return int(size)


def camera_name(camera: str | int) -> str:
    """The name of a camera in the dataset (``data/rgb/<name>``): the id or name as given (``0``, ``corner4``)."""
    return str(camera)


def _camera_arg(camera: str | int | None) -> str | int | None:
    """A camera as make_env takes it: ids given as strings ("0", "-1") become ints."""
    if isinstance(camera, str) and camera.lstrip("-").isdigit():
        return int(camera)
    return camera


def frame_sha256(frame: np.ndarray) -> str:
    """SHA-256 of a frame's bytes, prefixed with its shape so that two sizes never collide."""
    a = np.ascontiguousarray(frame, dtype=np.uint8)
    h = hashlib.sha256(f"{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def encode_frame(frame: np.ndarray) -> str:
    """A uint8 (H, W, 3) frame as a zlib-compressed, base64 string (plain JSON, for dataset attrs)."""
    a = np.ascontiguousarray(frame, dtype=np.uint8)
    head = "x".join(str(d) for d in a.shape)
    return head + ":" + base64.b64encode(zlib.compress(a.tobytes(), 9)).decode("ascii")


def decode_frame(text: str) -> np.ndarray:
    """Inverse of :func:`encode_frame`."""
    head, _, body = text.partition(":")
    shape = tuple(int(d) for d in head.split("x"))
    return np.frombuffer(zlib.decompress(base64.b64decode(body)), dtype=np.uint8).reshape(shape)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images (``inf`` when identical)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def simulator_versions() -> dict[str, str]:
    """Versions that decide the pixels: mujoco, dm_control, metaworld (those installed)."""
    from importlib import metadata

    out = {}
    for dist in ("mujoco", "dm_control", "metaworld", "mani_skill2", "sapien"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _gl_strings() -> str | None:
    """GL renderer and version of the context current in this thread (None when not readable)."""
    try:
        from OpenGL import GL

        renderer = GL.glGetString(GL.GL_RENDERER)
        version = GL.glGetString(GL.GL_VERSION)
    except Exception:  # PyOpenGL missing or no current context: the backend name alone must do
        return None
    if not renderer:
        return None
    dec = lambda s: s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)  # noqa: E731
    return f"{dec(renderer)}; {dec(version)}"


def gl_backend(renderer: "StateRenderer | None" = None) -> str:
    """``MUJOCO_GL`` plus the GL renderer string, e.g. ``egl: llvmpipe (LLVM 15.0.6, 256 bits); 4.5 ... Mesa 22.3.6``.

    With a renderer given, it renders once so that its context is current and the driver can be read.
    """
    backend = os.environ.get("MUJOCO_GL", "unset")
    if renderer is not None:
        renderer.render_current()
        detail = _gl_strings()
        if detail:
            return f"{backend}: {detail}"
    return backend


# ------------------------------------------------------------------------------------- rendering
class StateRenderer:
    """A fresh env of ``task`` that renders stored physics states (one GL context per image size).

    ``render(state)`` restores the state with ``env.set_physics_state`` and returns
    ``env.render_frame()``: the frame the online pixel env shows for that state (same renderer,
    camera, image size and render profile).

    Raises:
        UsageError: unknown task id or camera.
        MissingDependencyError: the task's simulator is not usable here (one line, why).
    """

    def __init__(self, task: str, *, size: int = 64, camera: str | int | None = None,
                 render_profile: str = "fast") -> None:
        from cdred_pipeline.envs import make_env, parse_task, task_available

        p = parse_task(task)
        ok, why = task_available(p.task)
        if not ok:
            raise MissingDependencyError(f"{p.task}: cannot render here: {why}")
        self.task = p.task
        self.size = check_size(size)
        self.env = make_env(p.task, obs="state", seed=0, image_size=self.size, camera=_camera_arg(camera),
                            render_profile=render_profile)
        spec = self.env.spec_info
        self.camera: str | int = -1 if spec.camera is None else spec.camera
        self.render_profile = render_profile
        self.physics_state_dim: int | None = spec.physics_state_dim

    def check_states(self, dim: int, where: str) -> None:
        """Raise a one-line DatasetError unless states of ``dim`` entries fit this simulator."""
        if dim == 0:
            raise DatasetError(f"{where}: data/physics_state has 0 columns: pixels cannot be re-rendered because "
                               "the dataset stores no simulator states (imported without them); re-collect with "
                               "`cdred collect-experts` or import a file that carries the states")
        if self.physics_state_dim is None:
            raise DatasetError(f"{where}: {self.task} exposes no physics state here, so its pixels cannot be re-rendered")
        if dim != self.physics_state_dim:
            raise DatasetError(f"{where}: physics states have {dim} entries but {self.task} here needs "
                               f"{self.physics_state_dim} (collected with another simulator version?); "
                               "re-collect with the installed versions")

    def render(self, state: np.ndarray) -> np.ndarray:
        """uint8 (size, size, 3) frame of ``state``."""
        self.env.set_physics_state(state)
        return self.env.render_frame(self.size)

    def render_current(self) -> np.ndarray:
        """Render whatever state the env holds (creates the GL context; used to read the GL driver)."""
        return self.env.render_frame(self.size)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "StateRenderer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_RENDERERS: dict[tuple[str, int, str, str], StateRenderer] = {}


def cached_renderer(task: str, size: int, camera: str | int | None, render_profile: str) -> StateRenderer:
    """One :class:`StateRenderer` per (task, size, camera, profile) per process (one GL context each)."""
    key = (task, int(size), str(camera), render_profile)
    r = _RENDERERS.get(key)
    if r is None:
        r = _RENDERERS[key] = StateRenderer(task, size=size, camera=camera, render_profile=render_profile)
    return r


# ------------------------------------------------------------------------------------------ probes
def default_probe_steps(num_states: int) -> list[int]:
    """First, middle and last index of ``num_states`` states (fewer when there are fewer states)."""
    if num_states <= 0:
        return []
    return sorted({0, num_states // 2, num_states - 1})


def probe_frames(task: str, physics_states: np.ndarray | Sequence[np.ndarray], *, size: int = 64,
                 camera: str | int | None = None, render_profile: str = "fast",
                 steps: Sequence[int] | None = None, keep_frames: bool | None = None) -> dict[str, Any]:
    """Render a few stored states in a fresh env and return their hashes (the ``attrs.sim.probe`` record).

    Args:
        task: task id of the states.
        physics_states: (N, S) states; ``steps`` index its rows. Pass the states of episode 0 (or the
            whole ``data/physics_state``): episode 0 starts at row 0, so the indices are then the
            global step indices of the dataset, which is what :func:`verify_probes` reads back.
        size, camera, render_profile: as ``make_env(task, obs="rgb", image_size=size, camera=camera,
            render_profile=render_profile)`` renders online (camera None = the task's default).
        steps: rows to probe (default: first, middle and last, :func:`default_probe_steps`).
        keep_frames: also store the probe frames (zlib+base64, a few KB each) so that a mismatch can
            be measured as PSNR; default: when ``size`` <= 128.

    Returns:
        Plain-JSON dict: ``format, task, size, camera, render_profile, gl_backend, versions, steps,
        sha256, states`` (and ``frames`` when kept).
    """
    states = np.asarray(physics_states, dtype=np.float64)
    if states.ndim != 2:
        raise UsageError(f"probe_frames: physics_states must be (N, S), got shape {states.shape}")
    idx = default_probe_steps(len(states)) if steps is None else [int(s) for s in steps]
    if not idx:
        raise UsageError("probe_frames: no states to probe")
    bad = [s for s in idx if not 0 <= s < len(states)]
    if bad:
        raise UsageError(f"probe_frames: steps {bad} out of range [0, {len(states)})")
    size = check_size(size)
    keep = size <= PROBE_FRAMES_MAX_SIZE if keep_frames is None else bool(keep_frames)
    with StateRenderer(task, size=size, camera=camera, render_profile=render_profile) as r:
        r.check_states(states.shape[1], f"probe_frames({r.task})")
        frames = [r.render(states[s]) for s in idx]
        backend = gl_backend(r)
        out: dict[str, Any] = {
            "format": PROBE_FORMAT, "task": r.task, "size": size, "camera": camera_name(r.camera),
            "render_profile": render_profile, "gl_backend": backend, "versions": simulator_versions(),
            "steps": idx, "sha256": [frame_sha256(f) for f in frames],
            # the states themselves (exact: JSON floats round-trip float64), so a later check does not
            # depend on the rows still sitting at these indices (merged or re-ordered datasets)
            "states": [states[s].tolist() for s in idx],
        }
    if keep:
        out["frames"] = [encode_frame(f) for f in frames]
    return out


def probes_of(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The probe records of a dataset's attrs (``sim.probe``: one dict or a list of them)."""
    probe = (attrs.get("sim") or {}).get("probe")
    if probe is None:
        return []
    return [p for p in (probe if isinstance(probe, list) else [probe]) if isinstance(p, Mapping)]


def verify_probes(attrs: Mapping[str, Any], physics_state: Any, *,
                  reference: Callable[[Mapping[str, Any], int], np.ndarray | None] | None = None) -> dict[str, Any]:
    """Re-render every probe of a dataset in a fresh env and compare with the stored hashes.

    Args:
        attrs: the dataset's root attrs (``sim.probe``, ``sim.versions``, ``env.task``).
        physics_state: ``data/physics_state`` (anything indexable by row).
        reference: optional ``(probe, step) -> frame`` giving reference pixels when the probe record
            holds none (e.g. rgb frames the dataset already has); used only for the PSNR.

    Returns:
        ``{"status": "ok" | "mismatch" | "skipped", "reason", "checks": [{step, size, camera,
        render_profile, expected, got, match, psnr}], "versions": {"recorded", "here"},
        "gl_backend": {"recorded", "here"}, "min_psnr"}``. PSNR is ``None`` when no reference pixels
        exist (only the hash is stored) and ``"inf"`` for identical pixels.
    """
    probes = probes_of(attrs)
    here_versions = simulator_versions()
    recorded_versions = dict((attrs.get("sim") or {}).get("versions") or {})
    if not probes:
        return {"status": "skipped", "reason": "the dataset has no probe hashes (attrs.sim.probe)", "checks": [],
                "versions": {"recorded": recorded_versions, "here": here_versions}}
    checks: list[dict[str, Any]] = []
    backends: dict[str, Any] = {"recorded": [], "here": []}
    task_default = str((attrs.get("env") or {}).get("task"))
    for probe in probes:
        recorded_versions = {**recorded_versions, **dict(probe.get("versions") or {})}
        backends["recorded"].append(probe.get("gl_backend"))
        here, probe_checks = _check_probe(probe, task_default, physics_state, reference)
        backends["here"].append(here)
        checks += probe_checks
    ok = all(c["match"] for c in checks) and bool(checks)
    finite = [c["psnr"] for c in checks if isinstance(c["psnr"], float)]
    out: dict[str, Any] = {
        "status": "ok" if ok else "mismatch", "checks": checks,
        "versions": {"recorded": recorded_versions, "here": here_versions},
        "gl_backend": {"recorded": backends["recorded"], "here": backends["here"]},
        "min_psnr": min(finite) if finite else None,
    }
    if not checks:
        out["reason"] = "the probe record lists no steps"
    return out


def _check_probe(probe: Mapping[str, Any], task_default: str, physics_state: Any,
                 reference: Callable[[Mapping[str, Any], int], np.ndarray | None] | None) -> tuple[str, list[dict[str, Any]]]:
    """Re-render one probe record's steps: the GL backend here and one check per step."""
    task = str(probe.get("task") or task_default)
    size = int(probe.get("size", 64))
    profile = str(probe.get("render_profile", "fast"))
    steps = [int(s) for s in probe.get("steps", [])]
    hashes = [str(h) for h in probe.get("sha256", [])]
    stored = probe.get("frames") or []
    probe_states = probe.get("states") or []
    r = cached_renderer(task, size, probe.get("camera"), profile)
    rows = int(physics_state.shape[0])
    checks = []
    for j, (step, expected) in enumerate(zip(steps, hashes)):
        row = np.asarray(physics_state[step], dtype=np.float64) if 0 <= step < rows else None
        state = np.asarray(probe_states[j], dtype=np.float64) if j < len(probe_states) else row
        if state is None:
            raise DatasetError(f"probe step {step} is outside data/physics_state ({rows} rows) "
                               "and the probe record holds no states")
        frame = r.render(state)
        got = frame_sha256(frame)
        ref = decode_frame(stored[j]) if j < len(stored) else (reference(probe, step) if reference else None)
        p = None if ref is None or ref.shape != frame.shape else psnr(ref, frame)
        checks.append({"step": step, "size": size, "camera": camera_name(r.camera), "render_profile": profile,
                       "expected": expected, "got": got, "match": got == expected,
                       "row_matches": bool(row is not None and np.array_equal(row, state)),
                       "psnr": None if p is None else ("inf" if math.isinf(p) else round(p, 3))})
    return gl_backend(r), checks


def describe_verification(v: Mapping[str, Any]) -> str:
    """One line for people: ``ok (3 probe frames bitwise equal)`` or the mismatch with PSNR and versions."""
    status = v.get("status")
    checks = v.get("checks") or []
    if status == "ok":
        return f"ok ({len(checks)} probe frames bitwise equal)"
    if status == "skipped":
        return f"skipped ({v.get('reason', '')})"
    bad = [c for c in checks if not c.get("match")]
    ps = [c.get("psnr") for c in bad]
    shown = ", ".join("n/a (no reference pixels stored)" if p is None else f"{p} dB" for p in ps[:3])
    rec, here = (v.get("versions") or {}).get("recorded", {}), (v.get("versions") or {}).get("here", {})
    diff = {k: (rec.get(k), here.get(k)) for k in sorted(set(rec) | set(here)) if rec.get(k) != here.get(k)}
    vtext = ("versions differ: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())) if diff \
        else f"same simulator versions ({', '.join(f'{k} {v_}' for k, v_ in sorted(here.items()))})"
    gl = v.get("gl_backend") or {}
    recorded_gl = {str(g) for g in gl.get("recorded", []) if g}
    here_gl = {str(g) for g in gl.get("here", []) if g}
    gtext = f"GL recorded {sorted(recorded_gl)} vs here {sorted(here_gl)}" if recorded_gl != here_gl else \
        f"same GL ({', '.join(sorted(here_gl))})"
    extra = f"; {v['written_mismatch']}" if v.get("written_mismatch") else ""
    return (f"MISMATCH: {len(bad)} of {len(checks)} probe frames differ from the collection-time hashes "
            f"(PSNR {shown}); {vtext}; {gtext}{extra}")


# ----------------------------------------------------------------------------------- contact sheet
def _label_font(width: int) -> Any:
    """Pillow's bundled font at a size that fits a label in a tile ``width`` pixels wide."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(8, min(14, width // 6)))
    except (TypeError, OSError, ImportError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def label_tile(tile: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``tile`` (H, W, 3) uint8 with ``text`` in white on a black box at its top-left corner."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(tile))
    draw = ImageDraw.Draw(img)
    font = _label_font(img.width)
    _, _, right, bottom = draw.textbbox((2, 1), text, font=font)
    draw.rectangle((0, 0, min(right + 2, img.width - 1), min(bottom + 2, img.height - 1)), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def contact_sheet(frames_of: Callable[[int], np.ndarray], num_episodes: int, path: str | os.PathLike, *,
                  episodes: int = 4, columns: int = 8, gap: int = 2) -> Path:
    """Write a PNG grid: one row per episode (up to ``episodes``, evenly spread), ``columns`` frames
    evenly spread over the episode's T+1 frames, ``gap`` white pixels between tiles; each tile is
    labelled with its episode index and step (frame t shows the state after t steps).

    ``frames_of(i)`` returns episode i's frames (T+1, H, W, 3) uint8.
    """
    import imageio.v3 as iio

    if num_episodes <= 0:
        raise DatasetError("contact sheet: the dataset has no episodes")
    rows = sorted({int(round(x)) for x in np.linspace(0, num_episodes - 1, min(episodes, num_episodes))})
    tiles: list[list[np.ndarray]] = []
    for i in rows:
        f = np.asarray(frames_of(i))
        cols = sorted({int(round(x)) for x in np.linspace(0, len(f) - 1, min(columns, len(f)))})
        tiles.append([label_tile(f[c], f"ep{i} t={c}") for c in cols])
    h, w = tiles[0][0].shape[:2]
    ncol = max(len(r) for r in tiles)
    sheet = np.full((len(tiles) * (h + gap) + gap, ncol * (w + gap) + gap, 3), 255, dtype=np.uint8)
    for ri, row in enumerate(tiles):
        for ci, tile in enumerate(row):
            y, x = gap + ri * (h + gap), gap + ci * (w + gap)
            sheet[y:y + h, x:x + w] = tile
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    iio.imwrite(tmp, sheet, extension=".png")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------ work units
@dataclass(frozen=True)
class RangeJob:
    """Render episodes [start, end) of ``dataset`` into the part store ``part`` (rows: each episode's
    T frames then its final frame, episodes in order)."""

    dataset: str
    start: int
    end: int
    part: str
    task: str
    size: int
    camera: str
    render_profile: str


_DRIVER: dict[str, int | None] = {"ppid": None}
_PR_SET_PDEATHSIG = 1


def die_with_driver(driver_pid: int) -> None:
    """In a worker process that ``driver_pid`` spawned: die with the driver.

    ``PR_SET_PDEATHSIG`` (Linux) kills the worker when the driver dies (e.g. SIGKILL), and elsewhere
    :func:`render_range` stops at the next episode, so a killed run never leaves workers writing into
    a folder a resumed run owns. Nothing happens in the driver itself or in a process the driver did
    not spawn (a Ray worker). Idempotent.
    """
    if os.getpid() == driver_pid or os.getppid() != driver_pid or _DRIVER["ppid"] == driver_pid:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the ppid check in render_range still stops orphans
        pass
    if os.getppid() != driver_pid:  # the driver died before prctl took effect
        os._exit(1)
    _DRIVER["ppid"] = driver_pid


def _orphaned() -> bool:
    ppid = _DRIVER["ppid"]
    return ppid is not None and os.getppid() != ppid


class PartWriter:
    """A uint8 (rows, H, W, 3) zarr array filled front to back in whole chunks (lz4: cheap, transient)."""

    CHUNK_BYTES = 4 * 1024 * 1024

    def __init__(self, path: Path, rows: int, frame_shape: tuple[int, ...]) -> None:
        import warnings

        import zarr
        from zarr.codecs import BloscCodec

        self.chunk = max(1, self.CHUNK_BYTES // int(np.prod(frame_shape)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.array = zarr.create_array(store=str(path), shape=(rows, *frame_shape), dtype="uint8",
                                           chunks=(self.chunk, *frame_shape), zarr_format=3,
                                           compressors=BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle"),
                                           fill_value=0, config={"write_empty_chunks": True})
        self.buf = np.empty((self.chunk, *frame_shape), dtype=np.uint8)
        self.n = 0
        self.written = 0

    def append(self, frame: np.ndarray) -> None:
        self.buf[self.n] = frame
        self.n += 1
        if self.n == self.chunk:
            self._flush()

    def _flush(self) -> None:
        if self.n:
            self.array[self.written:self.written + self.n] = self.buf[: self.n]
            self.written += self.n
            self.n = 0

    def close(self) -> int:
        self._flush()
        if self.written != self.array.shape[0]:
            raise CdredError(f"part {self.array.store}: wrote {self.written} of {self.array.shape[0]} frames")
        return self.written


def read_part(path: str | os.PathLike) -> Any:
    """Open a finished part store (the zarr array written by :func:`render_range`)."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zarr.open_array(str(path), mode="r", zarr_format=3)


def render_range(job: RangeJob) -> dict[str, Any]:
    """Render episodes [start, end) of a dataset into ``job.part`` (written under a temporary name and
    renamed when complete); returns a summary (start, end, frames, part name, seconds, pid)."""
    from cdred_pipeline.datasets.layout import open_group

    t0 = time.perf_counter()
    g = open_group(Path(job.dataset), mode="r")
    ends = np.asarray(g["meta/episode_ends"][:], dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    s, e = int(starts[job.start]), int(ends[job.end - 1])
    states = np.asarray(g["data/physics_state"][s:e], dtype=np.float64)
    finals = np.asarray(g["meta/final_physics_state"][job.start:job.end], dtype=np.float64)
    r = cached_renderer(job.task, job.size, job.camera, job.render_profile)
    part = Path(job.part)
    tmp = part.with_name(f".{part.name}.tmp{os.getpid()}")
    total = (e - s) + (job.end - job.start)
    w = PartWriter(tmp, total, (job.size, job.size, 3))
    off = 0
    for i in range(job.start, job.end):
        n = int(ends[i] - starts[i])
        for t in range(n):
            w.append(r.render(states[off + t]))
        w.append(r.render(finals[i - job.start]))
        off += n
        if _orphaned():  # the driver is gone
            os._exit(1)
    w.close()
    if part.exists():  # a leftover of a killed run that was never recorded as a unit: replace it
        shutil.rmtree(part, ignore_errors=True)
    os.replace(tmp, part)
    return {"start": job.start, "end": job.end, "frames": total, "part": part.name,
            "seconds": round(time.perf_counter() - t0, 3), "pid": os.getpid()}


# ------------------------------------------------------------------------- a small real dataset
def write_random_dataset(path: str | os.PathLike, task: str, *, episodes: int = 2, episode_length: int = 10,
                         seed: int = 0, rgb: bool = False, size: int = 64, camera: str | int | None = None,
                         render_profile: str = "fast", probe: bool = True, overwrite: bool = False) -> Path:
    """Step a real env of ``task`` with seeded uniform random actions and store the episodes (§6 layout).

    For tests, benchmarks and demos of render-visual (expert datasets come from collect-experts).
    With ``rgb`` the env is the online pixel env (``obs="rgb"``) and the frame it shows at each step
    (the last frame of its stacked observation) is stored as ``data/rgb/<camera>``: the reference
    render-visual must reproduce bitwise. With ``probe`` the ``attrs.sim.probe`` record of
    :func:`probe_frames` is stored for episode 0, as collect-experts does. Reset seeds come from the
    ``baseline-reset`` stream and the actions from ``random-actions`` (:mod:`cdred_pipeline.seeding`).
    """
    from cdred_pipeline.datasets import EpisodeWriter
    from cdred_pipeline.envs import make_env

    env = make_env(task, obs="rgb" if rgb else "state", seed=seed, episode_length=episode_length,
                   image_size=check_size(size), camera=_camera_arg(camera), render_profile=render_profile)
    spec = env.spec_info
    cam = camera_name(-1 if spec.camera is None else spec.camera)
    try:
        rows = _random_episodes(env, seed, episodes, cam if rgb else None)
    finally:
        env.close()
    attrs = _random_dataset_attrs(spec, cam, render_profile, seed)
    if probe:
        attrs["sim"]["probe"] = probe_frames(spec.task, rows[0]["physics_state"], size=size, camera=camera,
                                             render_profile=render_profile)
        attrs["sim"]["gl_backend"] = attrs["sim"]["probe"]["gl_backend"]
    with EpisodeWriter(path, attrs, overwrite=overwrite) as w:
        for row in rows:
            w.append_episode(**row)
    return Path(path)


def _random_dataset_attrs(spec: Any, cam: str, render_profile: str, seed: int) -> dict[str, Any]:
    """Root attrs of a random-action dataset (``env``, ``sim``, ``source``)."""
    return {
        "env": {"task": spec.task, "action_repeat": spec.action_repeat, "episode_length": spec.episode_length,
                "obs_dim": spec.obs_dim, "action_dim": spec.action_dim, "physics_state_dim": spec.physics_state_dim,
                "camera": cam, "image_size": spec.image_size, "render_profile": render_profile},
        "sim": {"engine": "mujoco", "versions": simulator_versions()},
        "source": {"kind": "random", "seed": int(seed)},
    }


def _shown_frame(obs: np.ndarray) -> np.ndarray:
    """The frame a pixel env shows: the last of its stacked (9, H, W) observation, as (H, W, 3)."""
    return np.ascontiguousarray(obs[-3:].transpose(1, 2, 0))


class _RandomEpisodeRecorder(TrajectoryRecorder):
    """:class:`TrajectoryRecorder` with the simulator states, and for a pixel env (``pixels``) also the
    state observations it reports in ``info["state"]`` (``state_obs``, (T+1, D))."""

    def __init__(self, pixels: bool) -> None:
        super().__init__(record_state=True)
        self.pixels, self.state_obs = pixels, []

    def on_reset(self, env: Any, obs: np.ndarray, info: dict[str, Any]) -> None:
        super().on_reset(env, obs, info)
        if self.pixels:
            self.state_obs.append(info["state"])

    def on_step(self, env: Any, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, reward: float,
                terminated: bool, truncated: bool, info: dict[str, Any]) -> None:
        super().on_step(env, obs, action, next_obs, reward, terminated, truncated, info)
        if self.pixels:
            self.state_obs.append(info["state"])

    def result(self, env: Any) -> dict[str, Any]:
        return {**super().result(env), "state_obs": np.array(self.state_obs)}


def _random_episodes(env: Any, seed: int, episodes: int, rgb_camera: str | None) -> list[dict[str, Any]]:
    """Uniform random episodes through the rollout loop, as ``EpisodeWriter.append_episode`` arguments
    (with the shown frames under ``rgb``/``final_rgb`` when ``rgb_camera`` is given)."""
    from cdred_pipeline.seeding import derive
    from cdred_pipeline.vector import random_act, run_vector_episodes

    seeds = [derive(seed, "baseline-reset", ep) for ep in range(int(episodes))]
    eps = run_vector_episodes([env], seeds, random_act(seed, env.spec_info.action_dim),
                              lambda i: _RandomEpisodeRecorder(rgb_camera is not None))
    return [_episode_row(ep, s, rgb_camera) for ep, s in zip(eps, seeds)]


def _episode_row(ep: dict[str, Any], ep_seed: int, rgb_camera: str | None) -> dict[str, Any]:
    """One recorded episode as ``EpisodeWriter.append_episode`` arguments."""
    obs = ep["state_obs"] if rgb_camera is not None else ep["obs"]
    row: dict[str, Any] = dict(obs=obs[:-1], action=ep["action"], reward=ep["reward"], terminated=ep["terminated"],
                               physics_state=ep["physics_state"], final_obs=obs[-1],
                               final_physics_state=ep["final_physics_state"], seed=ep_seed, success=ep["success"])
    if rgb_camera is not None:
        frames = [_shown_frame(o) for o in ep["obs"]]
        row["rgb"] = {rgb_camera: np.array(frames[:-1])}
        row["final_rgb"] = {rgb_camera: frames[-1]}
    return row
