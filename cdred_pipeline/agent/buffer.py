"""Replay buffer of whole episodes, sampled as sub-trajectories of length H+1 (Alg. 1; docs/interfaces.md).

Storage is one ring of ``capacity`` *slots* on the training device: an episode of T transitions takes
T+1 consecutive slots (its T+1 observations; slot i also holds the action taken and the reward got at
observation i, the last slot's are padding). Each slot records how many transitions of its episode
follow it (``steps_left``); a start slot is valid for horizon H iff ``steps_left >= H``, so samples
never cross an episode end. Old episodes are overwritten first-in first-out; a partially overwritten
episode keeps its newest slots, whose windows only reach forward inside it, so they remain valid.
Valid starts per horizon are cached and recomputed once per added episode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from cdred_pipeline.errors import CdredError


class ReplayBuffer:
    """FIFO episode buffer on ``device``.

    Args:
        capacity: number of observation slots (an episode of T steps uses T + 1).
        obs_shape: ``(D,)`` or ``(C, H, W)``.
        action_dim: A.
        device: where tensors live and batches are produced.
        obs_dtype: ``torch.float32`` for states, ``torch.uint8`` for pixels (stored as uint8).
        seed: seed of the buffer's own sampling generator.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: Sequence[int],
        action_dim: int,
        device: "str | torch.device" = "cpu",
        obs_dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2, got {capacity}")
        self.capacity, self.obs_shape, self.action_dim = int(capacity), tuple(int(s) for s in obs_shape), int(action_dim)
        self.device, self.obs_dtype = torch.device(device), obs_dtype
        self._obs = torch.zeros((self.capacity, *self.obs_shape), dtype=obs_dtype, device=self.device)
        self._action = torch.zeros((self.capacity, self.action_dim), dtype=torch.float32, device=self.device)
        self._reward = torch.zeros((self.capacity,), dtype=torch.float32, device=self.device)
        self._steps_left = torch.full((self.capacity,), -1, dtype=torch.int64, device=self.device)  # -1: empty
        self._ptr = 0            # next slot to write
        self._filled = 0         # slots ever written (<= capacity)
        self.num_episodes = 0    # episodes ever added
        self._starts: dict[int, Tensor] = {}
        self._gen = torch.Generator(device=self.device).manual_seed(int(seed))

    # ------------------------------------------------------------------------------------ writing
    def add_episode(self, obs: Any, action: Any, reward: Any) -> None:
        """Append one episode: obs (T+1, *obs_shape), action (T, A), reward (T,) (numpy or torch)."""
        obs_t = torch.as_tensor(np.asarray(obs) if not isinstance(obs, Tensor) else obs)
        act_t = torch.as_tensor(np.asarray(action) if not isinstance(action, Tensor) else action, dtype=torch.float32)
        rew_t = torch.as_tensor(np.asarray(reward) if not isinstance(reward, Tensor) else reward, dtype=torch.float32)
        T = act_t.shape[0]
        if tuple(obs_t.shape) != (T + 1, *self.obs_shape):
            raise ValueError(f"obs must have shape {(T + 1, *self.obs_shape)} for {T} actions, got {tuple(obs_t.shape)}")
        if tuple(act_t.shape) != (T, self.action_dim) or tuple(rew_t.reshape(-1).shape) != (T,):
            raise ValueError(
                f"action must be ({T}, {self.action_dim}) and reward ({T},), got {tuple(act_t.shape)}, {tuple(rew_t.shape)}"
            )
        if T < 1:
            raise ValueError("an episode needs at least one transition")
        if T + 1 > self.capacity:
            raise CdredError(f"episode of {T} steps does not fit a replay buffer of {self.capacity} slots; raise capacity")
        if obs_t.dtype != self.obs_dtype:
            if self.obs_dtype == torch.uint8 and obs_t.is_floating_point():
                raise ValueError("pixel buffer expects uint8 observations, got floats")
            obs_t = obs_t.to(self.obs_dtype)
        idx = (self._ptr + torch.arange(T + 1, device=self.device)) % self.capacity
        self._obs[idx] = obs_t.to(self.device)
        self._action[idx[:-1]] = act_t.to(self.device)
        self._action[idx[-1]] = 0.0
        self._reward[idx[:-1]] = rew_t.reshape(-1).to(self.device)
        self._reward[idx[-1]] = 0.0
        self._steps_left[idx] = torch.arange(T, -1, -1, device=self.device)
        self._ptr = (self._ptr + T + 1) % self.capacity
        self._filled = min(self.capacity, self._filled + T + 1)
        self.num_episodes += 1
        self._starts.clear()

    @classmethod
    def from_episodes(
        cls,
        episodes: Iterable[dict],
        *,
        obs_shape: Sequence[int],
        action_dim: int,
        device: "str | torch.device" = "cpu",
        obs_dtype: torch.dtype = torch.float32,
        capacity: Optional[int] = None,
        seed: int = 0,
    ) -> "ReplayBuffer":
        """A buffer holding ``episodes`` (dicts with obs/action/reward as ``load_episodes`` returns)."""
        eps = list(episodes)
        cap = capacity if capacity is not None else sum(len(e["action"]) + 1 for e in eps)
        buf = cls(cap, obs_shape, action_dim, device, obs_dtype, seed)
        for e in eps:
            buf.add_episode(e["obs"], e["action"], e["reward"])
        return buf

    # ------------------------------------------------------------------------------------ reading
    @property
    def num_steps(self) -> int:
        """Transitions currently stored."""
        return int((self._steps_left > 0).sum())

    def num_valid_starts(self, horizon: int) -> int:
        """How many start slots admit a sub-trajectory of ``horizon`` transitions."""
        return int(self._valid_starts(horizon).numel())

    def _valid_starts(self, horizon: int) -> Tensor:
        if horizon not in self._starts:
            self._starts[horizon] = torch.nonzero(self._steps_left >= horizon).squeeze(1)
        return self._starts[horizon]

    def sample(self, batch_size: int, horizon: int) -> dict[str, Tensor]:
        """``batch_size`` sub-trajectories of ``horizon`` transitions, uniformly over valid starts.

        Returns ``obs`` (H+1, B, *obs_shape) in the stored dtype, ``action`` (H, B, A) and
        ``reward`` (H, B, 1), on the buffer's device.
        """
        starts = self._valid_starts(horizon)
        if starts.numel() == 0:
            raise CdredError(f"replay buffer has no sub-trajectory of {horizon} steps yet; add longer episodes first")
        pick = torch.randint(starts.numel(), (batch_size,), device=self.device, generator=self._gen)
        idx = (starts[pick].unsqueeze(0) + torch.arange(horizon + 1, device=self.device).unsqueeze(1)) % self.capacity
        return {
            "obs": self._obs[idx],
            "action": self._action[idx[:-1]],
            "reward": self._reward[idx[:-1]].unsqueeze(-1),
        }

    def __len__(self) -> int:
        return self.num_steps

    # ------------------------------------------------------------------------------------ state
    def sampler_state(self) -> dict[str, Any]:
        """The sampling generator's state with the number of episodes and slots it samples from (a tensor
        and plain types): a buffer of the same contents given it by :meth:`load_sampler_state` draws the
        same batches from then on (a resumed run's expert buffer, rebuilt from the demos)."""
        return {"device": self.device.type, "state": self._gen.get_state(), "num_episodes": self.num_episodes,
                "filled": self._filled}

    def load_sampler_state(self, state: dict[str, Any], what: str = "replay buffer") -> None:
        """Restore :meth:`sampler_state`; a one-line CdredError when this buffer does not hold as many
        episodes and slots as the one it was taken from (its draws would pick other data)."""
        mine, theirs = (self.num_episodes, self._filled), (int(state["num_episodes"]), int(state["filled"]))
        if mine != theirs:
            raise CdredError(f"the checkpoint's {what} held (episodes, slots) {theirs}, this one {mine}: resume "
                             "with the same data, or start in another folder")
        self._set_generator(state["device"], state["state"], seed=self.num_episodes)

    def _set_generator(self, device_type: str, gen_state: Tensor, seed: int) -> None:
        """Set the sampling generator's state; one saved on another device type cannot be set (states
        differ in kind), so the generator is then reseeded deterministically with ``seed``."""
        if device_type == self.device.type:
            self._gen.set_state(gen_state)
        else:
            self._gen.manual_seed(int(seed))

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain types only (``torch.load(weights_only=True)``-safe)."""
        n = self._filled
        return {
            "format": "cdred-replay-buffer",
            "capacity": self.capacity,
            "obs_shape": list(self.obs_shape),
            "action_dim": self.action_dim,
            "obs_dtype": str(self.obs_dtype).replace("torch.", ""),
            "obs": self._obs[:n].cpu(),
            "action": self._action[:n].cpu(),
            "reward": self._reward[:n].cpu(),
            "steps_left": self._steps_left[:n].cpu(),
            "ptr": self._ptr,
            "filled": self._filled,
            "num_episodes": self.num_episodes,
            "gen_state": self._gen.get_state(),
            "gen_device": self.device.type,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a buffer built with the same capacity and shapes."""
        if state.get("format") != "cdred-replay-buffer":
            raise CdredError("not a cdred replay-buffer state")
        want = (list(self.obs_shape), self.action_dim)
        got = (list(state["obs_shape"]), state["action_dim"])
        if want != got:
            raise CdredError(f"replay buffer state is for (obs_shape, action_dim)={got}, this buffer is {want}")
        n = int(state["filled"])
        if int(state["capacity"]) == self.capacity:  # same ring: copy it as is
            self._obs[:n] = state["obs"].to(self.device, self.obs_dtype)
            self._action[:n] = state["action"].to(self.device)
            self._reward[:n] = state["reward"].to(self.device)
            self._steps_left[:n] = state["steps_left"].to(self.device)
            self._steps_left[n:] = -1
            self._ptr, self._filled = int(state["ptr"]), n
        else:  # another capacity (e.g. a run extended to more steps): re-add the episodes oldest first
            self._steps_left.fill_(-1)
            self._ptr = self._filled = 0
            order = (int(state["ptr"]) + torch.arange(n)) % n if n == int(state["capacity"]) else torch.arange(n)
            ends = torch.nonzero(state["steps_left"][order] == 0).squeeze(1).tolist()
            start = 0
            for end in ends:  # a loop over episodes, not samples; the oldest may be a tail fragment
                seg = order[start : end + 1]
                if len(seg) >= 2:
                    self.add_episode(state["obs"][seg], state["action"][seg[:-1]], state["reward"][seg[:-1]])
                start = end + 1
        self.num_episodes = int(state["num_episodes"])
        self._set_generator(state.get("gen_device", "cpu"), state["gen_state"], seed=self.num_episodes)
        self._starts.clear()

    def save(self, path: "str | Path") -> None:
        """Atomically write :meth:`state_dict` to ``path``."""
        from cdred_pipeline.agent.checkpoint import atomic_torch_save

        atomic_torch_save(self.state_dict(), path)

    def load(self, path: "str | Path") -> None:
        """Load a file written by :meth:`save` into this buffer."""
        from cdred_pipeline.agent.checkpoint import safe_torch_load

        self.load_state_dict(safe_torch_load(path, what="replay buffer"))


__all__ = ["ReplayBuffer"]
