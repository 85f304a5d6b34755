"""The OpenGL backend MuJoCo renders with (``MUJOCO_GL``), checked before mujoco is imported.

The bottom of the envs layers: it imports nothing of cdred but its errors, so the task table
(``spec``), the env base class and the live catalog all check the backend the same way.
"""

from __future__ import annotations

import os

from cdred_pipeline.errors import CdredError

GL_HINT = "run with MUJOCO_GL=egl (headless; or MUJOCO_GL=osmesa after `apt-get install -y libosmesa6`)"
"""What every GL error message tells the user to do."""
GL_BACKENDS = frozenset({"egl", "osmesa", "glfw"})
"""``MUJOCO_GL`` values that select a rendering backend."""
GL_ACCEPTED = GL_BACKENDS | {"", "0", "1", "disable", "disabled", "enable", "enabled", "false", "off", "on", "true"}
"""Every ``MUJOCO_GL`` value ``import mujoco`` accepts (the others make it raise)."""


def gl_env_valid() -> bool:
    """Whether ``MUJOCO_GL`` is unset or a value ``import mujoco`` accepts."""
    gl = os.environ.get("MUJOCO_GL")
    return gl is None or gl.strip().lower() in GL_ACCEPTED


def check_gl_env() -> None:
    """Fail early, in one line, when ``MUJOCO_GL`` holds a value that breaks ``import mujoco``.

    Call before the first import of mujoco/dm_control. An unset variable is fine for stepping; rendering
    then checks again (:func:`check_gl_for_rendering`).
    """
    if not gl_env_valid():
        raise CdredError(f"MUJOCO_GL={os.environ['MUJOCO_GL']!r} is not a rendering backend: {GL_HINT}")


def check_gl_for_rendering() -> None:
    """Fail in one line when no usable rendering backend is selected (before creating a GL context)."""
    check_gl_env()
    gl = (os.environ.get("MUJOCO_GL") or "").strip().lower()
    if gl in GL_BACKENDS:
        return
    if gl in ("", "glfw") and os.environ.get("DISPLAY"):
        return  # glfw on a desktop
    shown = "unset" if "MUJOCO_GL" not in os.environ else f"MUJOCO_GL={os.environ['MUJOCO_GL']!r}"
    raise CdredError(f"rendering needs an OpenGL backend but {shown} and no display: {GL_HINT}")
