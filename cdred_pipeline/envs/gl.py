"""The OpenGL backend MuJoCo renders with (``MUJOCO_GL``), checked before mujoco is imported.

The bottom of the envs layers: it imports nothing of cdred but its errors, so the task table
(``spec``), the env base class and the live catalog all check the backend the same way. The CLI calls
:func:`choose_headless_backend` at start-up (the backend is fixed when mujoco is first imported), and a
stage that renders calls :func:`check_rendering_works` before its work, so a missing backend fails at
once rather than after the work is done.
"""

from __future__ import annotations

import os
import sys

from cdred_pipeline.errors import CdredError, MissingDependencyError

GL_HINT = "run with MUJOCO_GL=egl (headless; or MUJOCO_GL=osmesa after `apt-get install -y libosmesa6`)"
"""What every GL error message tells the user to do."""
GL_BACKENDS = frozenset({"egl", "osmesa", "glfw"})
"""``MUJOCO_GL`` values that select a rendering backend."""
GL_ACCEPTED = GL_BACKENDS | {"", "0", "1", "disable", "disabled", "enable", "enabled", "false", "off", "on", "true"}
"""Every ``MUJOCO_GL`` value ``import mujoco`` accepts (the others make it raise)."""
HEADLESS_BACKENDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("egl", ("libEGL.so.1", "libEGL.so")),
    ("osmesa", ("libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so")),
)
"""Headless backends in the order they are tried, each with the shared libraries it loads."""

_STATE: dict[str, str | None] = {"chosen": None, "rendered": None}


def gl_env_valid() -> bool:
    """Whether ``MUJOCO_GL`` is unset or a value ``import mujoco`` accepts."""
    gl = os.environ.get("MUJOCO_GL")
    return gl is None or gl.strip().lower() in GL_ACCEPTED


def check_gl_env() -> None:
    """Fail early, in one line, when ``MUJOCO_GL`` holds a value that breaks ``import mujoco``.

    Call before the first import of mujoco/dm_control: a backend whose library does not load breaks the
    import too. An unset variable is fine for stepping; rendering then checks again
    (:func:`check_gl_for_rendering`).
    """
    if not gl_env_valid():
        raise MissingDependencyError(f"MUJOCO_GL={os.environ['MUJOCO_GL']!r} is not a rendering backend: {GL_HINT}")
    gl = os.environ.get("MUJOCO_GL", "").strip().lower()
    libs = dict(HEADLESS_BACKENDS).get(gl)
    if libs and not loadable(libs):  # import mujoco would fail deep inside PyOpenGL
        raise MissingDependencyError(f"MUJOCO_GL={gl} but its library {libs[0]} is not installed here: {GL_HINT}")


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def loadable(names: tuple[str, ...]) -> bool:
    """Whether one of the shared libraries ``names`` loads in this process."""
    import ctypes

    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def choose_headless_backend() -> str | None:
    """Set ``MUJOCO_GL`` (and ``PYOPENGL_PLATFORM``) to the first headless backend whose library loads
    (egl, then osmesa) when the variable is unset, there is no display and mujoco is not imported yet,
    so that rendering works without a desktop; returns the backend chosen, else None (nothing changed)."""
    if "MUJOCO_GL" in os.environ or _has_display() or "mujoco" in sys.modules or not sys.platform.startswith("linux"):
        return None
    for name, libs in HEADLESS_BACKENDS:
        if loadable(libs):
            os.environ["MUJOCO_GL"] = name
            os.environ.setdefault("PYOPENGL_PLATFORM", name)
            _STATE["chosen"] = name
            return name
    return None


def chosen_backend() -> str | None:
    """The backend :func:`choose_headless_backend` set in this process, or None."""
    return _STATE["chosen"]


def check_gl_for_rendering() -> None:
    """Fail in one line when no usable rendering backend is selected (before creating a GL context)."""
    check_gl_env()
    gl = (os.environ.get("MUJOCO_GL") or "").strip().lower()
    if gl in GL_BACKENDS:
        return
    if gl in ("", "glfw") and _has_display():
        return  # glfw on a desktop
    shown = "MUJOCO_GL is unset" if "MUJOCO_GL" not in os.environ else f"MUJOCO_GL={os.environ['MUJOCO_GL']!r}"
    raise MissingDependencyError(f"rendering needs an OpenGL backend but {shown}, there is no display and neither "
                                 f"libEGL nor libOSMesa loads: {GL_HINT}")


def _render_one_frame() -> None:
    """Create a GL context with the selected backend and render one 16x16 frame of an empty scene."""
    import mujoco

    model = mujoco.MjModel.from_xml_string("<mujoco/>")
    renderer = mujoco.Renderer(model, 16, 16)
    try:
        renderer.update_scene(mujoco.MjData(model))
        renderer.render()
    finally:
        renderer.close()


def check_rendering_works() -> str:
    """Render one frame now with the selected backend (once per process) and return the backend's name;
    a one-line MissingDependencyError when it cannot, so that a stage that renders fails before its work."""
    check_gl_for_rendering()
    backend = (os.environ.get("MUJOCO_GL") or "glfw").strip().lower()
    if _STATE["rendered"] == backend:
        return backend
    try:
        _render_one_frame()
    except CdredError:
        raise
    except Exception as exc:  # noqa: BLE001 - every GL failure (FatalError, ImportError, ...) is the same fault
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MissingDependencyError(f"MUJOCO_GL={backend} cannot render here ({first[:200]}): {GL_HINT}") from None
    _STATE["rendered"] = backend
    return backend
