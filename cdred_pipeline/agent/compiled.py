"""``torch.compile`` of the agent's loss functions (``AgentConfig.compile``).

On CPU the small presets' 128-wide layers spend more time in element-wise operators (LayerNorm,
Mish, softmax, two-hot) than in matrix products; inductor fuses them into a few loops of generated
C++. Random operators (dropout, the policy's samples) are left to eager PyTorch
(``fallback_random``), so a compiled update draws exactly the numbers an eager one draws and the
two paths differ only by float rounding (tests/test_agent.py pins the tolerance).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import warnings
from typing import Any, Callable, TypeVar

import torch

from cdred_pipeline.errors import UsageError

F = TypeVar("F", bound=Callable)

_CXX = ("g++", "c++", "clang++")


def compile_unavailable(device: torch.device) -> str:
    """Why ``torch.compile`` cannot build kernels for ``device`` here ('' when it can): CPU kernels
    need a C++ compiler, CUDA kernels need triton."""
    if device.type == "cuda":
        return "" if importlib.util.find_spec("triton") else "torch.compile on CUDA needs triton (pip install triton)"
    cxx = os.environ.get("CXX")
    if (cxx and shutil.which(cxx)) or any(shutil.which(c) for c in _CXX):
        return ""
    return "torch.compile on CPU needs a C++ compiler (install g++, or set CXX)"


def compile_fn(fn: F, device: torch.device) -> F:
    """``torch.compile(fn)`` with eager random numbers and static shapes; a one-line UsageError when the
    device has no compiler toolchain (turn ``compile`` off to run eagerly). Static: the losses' code is
    shared by every agent of a process, and a second batch shape (another agent, another method) would
    otherwise retrace with symbolic sizes, which eager random numbers (``torch.randn(shape)``) reject."""
    why = compile_unavailable(device)
    if why:
        raise UsageError(f"{why}; or run without compiling (compile=False, --no-compile)")
    return torch.compile(fn, dynamic=False, options={"fallback_random": True})  # type: ignore[return-value]


def resolve_compile(requested: "bool | None", preset_default: bool, device: torch.device) -> tuple[bool, str]:
    """Whether a stage compiles: ``requested`` (the ``--compile/--no-compile`` flag) or, when unset, the
    agent preset's default on a CPU that has a C++ compiler (on CUDA the default is CUDA graphs, which
    replay the whole update in one launch). Returns (on, a notice for the log when the preset's default
    is dropped); an explicit request without a toolchain is a one-line UsageError."""
    if requested is False or (requested is None and (not preset_default or device.type == "cuda")):
        return False, ""
    why = compile_unavailable(device)
    if not why:
        return True, ""
    if requested:
        raise UsageError(f"{why}; or pass --no-compile")
    return False, f"running eagerly: {why}"


def with_compile(cfg: Any, requested: "bool | None", device: "str | torch.device") -> Any:
    """``cfg`` (an AgentConfig) with ``compile`` resolved for a stage run on ``device`` (see
    :func:`resolve_compile`); the notice of an eager fallback goes out as a RuntimeWarning."""
    from cdred_pipeline.agent.config import resolve_device

    on, notice = resolve_compile(requested, cfg.compile, resolve_device(device))
    if notice:
        warnings.warn(notice, RuntimeWarning, stacklevel=2)
    return dataclasses.replace(cfg, compile=on)


__all__ = ["compile_fn", "compile_unavailable", "resolve_compile", "with_compile"]
