"""The TD-MPC2-style world-model agent (paper App. A-B; docs/design.md §3; docs/interfaces.md "Agent").

```python
from cdred_pipeline.agent import AgentConfig, PRESETS, TDMPC2Agent, ReplayBuffer
cfg = AgentConfig.preset("small", episode_length=500)
agent = TDMPC2Agent(cfg, obs_shape=(5,), action_dim=1, device="auto")
```
The online trainer is ``cdred_pipeline.agent.trainer`` (``OnlineTrainer``, ``train_online``; also re-exported here).
"""

from cdred_pipeline.agent.agent import TDMPC2Agent
from cdred_pipeline.agent.buffer import ReplayBuffer
from cdred_pipeline.agent.config import PRESETS, AgentConfig, resolve_device
from cdred_pipeline.agent.reward_head import RewardHead, TwoHotRewardHead
from cdred_pipeline.agent.world_model import WorldModel

__all__ = [
    "AgentConfig", "PRESETS", "TDMPC2Agent", "ReplayBuffer", "RewardHead", "TwoHotRewardHead", "WorldModel",
    "resolve_device", "OnlineTrainer", "TrainerConfig", "TrainerState", "train_online",
]


def __getattr__(name: str) -> object:
    """The trainer's names, imported on first use."""
    # the trainer pulls in tqdm/matplotlib lazily; import it on first use
    if name in ("OnlineTrainer", "TrainerConfig", "TrainerState", "train_online"):
        from cdred_pipeline.agent import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
