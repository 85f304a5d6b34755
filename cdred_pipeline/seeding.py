"""Named random streams derived from a stage's seed: the one place seeds are made.

Every random draw of a stage comes from ``derive(seed, stream, *index)``: a 32-bit seed that depends
only on the stage seed, the stream's name and the indices (episode number, row, ...), never on the
order in which work runs, the number of envs or workers, or on any other stream. The same command
with the same seed therefore gives the same result, and two streams never share draws.

```python
reset = derive(cfg.seed, "eval-reset", i)          # the reset seed of evaluation episode i
rng = numpy_rng(cfg.seed, "random-actions", i)     # a numpy Generator for one episode's actions
gen = torch_generator(cfg.seed, "mppi", i, device=agent.device)
```

Per-episode streams inside an env (the simulator's initial state, tremble draws) derive from the
episode's reset seed the same way (``derive(episode_seed, "sim")``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: stream name -> the fixed number that enters the derivation. Never renumber a stream: its numbers
#: are part of every cached result made with it. Add new streams with new numbers.
STREAMS: dict[str, int] = {
    # per-episode streams of an env, derived from the episode's reset seed
    "sim": 0,                 # the simulator's initial-state draw
    "tremble": 1,             # which steps tremble, and the random actions they take
    # collect-experts, per episode index
    "demo-reset": 100,        # reset seeds of the demonstration episodes
    "baseline-reset": 101,    # reset seeds of the random-policy baseline episodes
    "random-actions": 102,    # the random policy's actions
    "mppi": 103,              # an agent's MPPI samples, one generator per episode
    # evaluate, per episode index
    "eval-reset": 7,
    # online training (trainer), per episode index
    "train-reset": 200,       # reset seeds of training episodes
    "seed-actions": 201,      # uniform-random actions while seeding the buffer
    "train-eval-reset": 202,  # reset seeds of the trainer's evaluation episodes (the same set every evaluation)
    "replay": 203,            # replay-buffer sampling
    "expert-replay": 204,     # expert-buffer sampling (imitation)
    "random-buffer": 205,     # the random-policy buffer of the reward diagnostics
    "random-episodes": 206,   # the random-policy episodes of the reward diagnostics
    # model initialisation
    "predictor-init": 300,    # CDRED predictors (the frozen targets use the seed itself)
}


def derive(seed: int, stream: str, *index: int) -> int:
    """A 32-bit seed for ``stream`` (a name in :data:`STREAMS`) at ``index`` under the stage ``seed``."""
    try:
        number = STREAMS[stream]
    except KeyError:
        raise KeyError(f"unknown seed stream {stream!r}; known: {', '.join(STREAMS)}") from None
    return int(np.random.SeedSequence([int(seed), number, *(int(i) for i in index)]).generate_state(1)[0])


def numpy_rng(seed: int, stream: str, *index: int) -> np.random.Generator:
    """A numpy ``Generator`` on the stream (see :func:`derive`)."""
    return np.random.default_rng(derive(seed, stream, *index))


def torch_generator(seed: int, stream: str, *index: int, device: Any = "cpu") -> Any:
    """A ``torch.Generator`` on ``device`` seeded from the stream (see :func:`derive`)."""
    import torch

    return torch.Generator(device=device).manual_seed(derive(seed, stream, *index))


__all__ = ["STREAMS", "derive", "numpy_rng", "torch_generator"]
