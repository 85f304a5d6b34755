"""CUDA-graph capture of the agent's hot paths: the update and the MPPI plan are hundreds of
small kernels each, so on a GPU they are bound by kernel-launch latency, not arithmetic. A captured
graph replays all of them with one launch. CPU runs the same Python functions eagerly.

```python
step = GraphedCall(fn, example_inputs, warmup=3, generators=[gen])
outputs = step(*inputs)      # copies inputs into static buffers; eager for the first calls, then replay
```
The outputs of a replay are the graph's static tensors: read or clone them before the next call.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor


def graphs_available(device: torch.device) -> bool:
    """CUDA graphs need a CUDA device and a torch that can register custom generators with a graph."""
    return device.type == "cuda" and torch.cuda.is_available() and hasattr(torch.cuda.CUDAGraph, "register_generator_state")


class GraphedCall:
    """``fn(*static_inputs) -> tensor or tuple of tensors``, run eagerly on a side stream for the first
    ``warmup`` calls (cuBLAS workspaces and lazily built optimiser state must exist before capture),
    then captured once and replayed. ``fn`` must not synchronise with the host or branch on data.

    Args:
        fn: the function to capture; it is called with the static input buffers.
        example: one example per input (shape, dtype and device of the static buffers).
        warmup: eager calls before the capture (each a real call: its effects count).
        generators: CUDA ``torch.Generator`` objects ``fn`` draws from; registered with the graph so that
            every replay advances them as an eager call would.
    """

    def __init__(self, fn: Callable[..., Any], example: Sequence[Tensor], *, warmup: int = 3,
                 generators: Sequence[torch.Generator] = ()) -> None:
        self.fn = fn
        self.inputs = [torch.empty_like(t) for t in example]
        self.device = self.inputs[0].device
        self.warmup, self.generators = int(warmup), list(generators)
        self.calls = 0
        self.failed = False  # the capture raised: run eagerly from then on
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs: Any = None
        self._stream = torch.cuda.Stream(self.device)

    def __call__(self, *args: Tensor) -> Any:
        for buf, a in zip(self.inputs, args):
            buf.copy_(a, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        current = torch.cuda.current_stream(self.device)
        if self.failed:
            return self.fn(*self.inputs)
        if self.calls < self.warmup:
            self.calls += 1
            self._stream.wait_stream(current)
            with torch.cuda.stream(self._stream):
                out = self.fn(*self.inputs)
            current.wait_stream(self._stream)
            return out
        graph = torch.cuda.CUDAGraph()
        for gen in self.generators:
            graph.register_generator_state(gen)
        torch.cuda.synchronize(self.device)
        try:
            with torch.cuda.graph(graph):
                self.outputs = self.fn(*self.inputs)
        except RuntimeError as exc:  # an operator that cannot be captured: stay correct, run eagerly
            self.failed = True
            first = (str(exc).strip().splitlines() or [""])[0]
            warnings.warn(f"CUDA graph capture of {getattr(self.fn, '__qualname__', self.fn)} failed ({first[:160]}); "
                          "running it eagerly", RuntimeWarning, stacklevel=2)
            torch.cuda.synchronize(self.device)
            return self.fn(*self.inputs)
        self.graph = graph
        graph.replay()  # capture records the work without running it: run this call's work now
        return self.outputs


__all__ = ["GraphedCall", "graphs_available"]
