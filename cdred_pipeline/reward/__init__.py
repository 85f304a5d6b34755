"""CDRED reward model (paper §3): random target ensemble, expert and behavioural predictors, Eq. 3-9.

Public API::

    from cdred_pipeline.reward import (CDREDConfig, PRESETS, CDREDRewardHead, reward_from_outputs,
                                       bonus, lemma1_statistic, target_moments, red_loss, red_reward)
"""

from cdred_pipeline.reward.config import PRESETS, CDREDConfig
from cdred_pipeline.reward.functional import (
    DEFAULT_EPS,
    bonus,
    lemma1_statistic,
    red_loss,
    red_reward,
    resolve_g,
    reward_from_outputs,
    target_moments,
)
from cdred_pipeline.reward.model import CDREDRewardHead, NormedLinear, RandomTargetEnsemble

__all__ = [
    "CDREDConfig",
    "PRESETS",
    "CDREDRewardHead",
    "RandomTargetEnsemble",
    "NormedLinear",
    "reward_from_outputs",
    "bonus",
    "lemma1_statistic",
    "target_moments",
    "red_loss",
    "red_reward",
    "resolve_g",
    "DEFAULT_EPS",
]
