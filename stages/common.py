"""What several stages share: turning a user's DATASET / AGENT argument into a file and a cache key,
and loading an agent checkpoint for acting."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cdred_pipeline.artifacts import ArtifactStore
from cdred_pipeline.errors import CdredError, DatasetError

DATASET_NAME = "demos.zarr"
AGENT_NAME = "agent.pt"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (checkpoint identity in cache keys and dataset attrs)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tree_identity(path: Path) -> str:
    """Identity of a folder outside the store: its path, and the names, sizes and mtimes of its files."""
    h = hashlib.sha256(str(path.resolve()).encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def resolve_dataset(arg: str, store: ArtifactStore) -> tuple[Path, str]:
    """DATASET as a path (a ``.zarr`` store or an artifact folder holding one) or an artifact key.

    Returns the store path and the cache key of the input: the artifact key when it lives in the
    store, else a content identity of the folder.
    """
    p = Path(arg)
    if p.exists():
        if (p / DATASET_NAME).is_dir():
            p = p / DATASET_NAME
        if not p.is_dir():
            raise DatasetError(f"{arg}: not a zarr dataset folder; pass a demos.zarr or an artifact key")
        parent = p.parent
        if (parent / "manifest.json").is_file() and not parent.name.startswith("."):
            return p, parent.name
        return p, "path:" + _tree_identity(p)
    art = store.find(arg)
    if not art.complete:
        raise DatasetError(f"artifact {art.stage}/{art.key} is {art.manifest.get('status')}; finish it first "
                           "(rerun the stage that made it)")
    path = art.path / DATASET_NAME
    if not path.is_dir():
        raise DatasetError(f"artifact {art.stage}/{art.key} holds no {DATASET_NAME}; it is not a dataset")
    return path, art.key


def dataset_scores(arg: str, store: ArtifactStore) -> dict[str, Any]:
    """The ``scores`` attrs (random and expert return) of a dataset given as path or artifact key."""
    from cdred_pipeline.datasets import open_dataset

    path, _ = resolve_dataset(arg, store)
    return dict(open_dataset(path).attrs.get("scores", {}))


def resolve_checkpoint(arg: str, store: ArtifactStore) -> tuple[Path, str]:
    """AGENT as a checkpoint file, an artifact folder holding ``agent.pt``, or an artifact key."""
    p = Path(arg)
    if p.is_dir():
        p = p / AGENT_NAME
    if p.is_file():
        parent = p.parent
        if (parent / "manifest.json").is_file() and not parent.name.startswith("."):
            return p, parent.name
        return p, "sha256:" + file_sha256(p)[:16]
    if p.suffix == ".pt" or "/" in arg:
        raise CdredError(f"{arg}: no such checkpoint file", exit_code=2)
    art = store.find(arg)
    if not art.complete or not (art.path / AGENT_NAME).is_file():
        raise CdredError(f"artifact {art.stage}/{art.key} has no finished {AGENT_NAME} "
                         f"(status {art.manifest.get('status')}); pass an experts or imitate artifact", exit_code=2)
    return art.path / AGENT_NAME, art.key


def load_agent(path: str | Path, *, device: str = "auto", plan: bool | None = None) -> tuple[Any, dict[str, Any]]:
    """Load any cdred agent checkpoint (expert or imitation) for acting.

    Imitation checkpoints carry their reward model's config in ``extra["reward_config"]``; the CDRED
    head is rebuilt from it so its weights load. ``plan`` overrides how the agent acts (MPPI or the
    policy prior). Returns the agent and the checkpoint's ``extra`` (task, obs kind, preset, scores).
    """
    from cdred_pipeline.agent import TDMPC2Agent

    ckpt = TDMPC2Agent.read_checkpoint(path)
    extra = dict(ckpt.get("extra", {}))
    head = None
    if "reward_config" in extra:
        from cdred_pipeline.reward import CDREDConfig, CDREDRewardHead

        rc = dict(extra["reward_config"])
        rc["hidden"] = tuple(rc.get("hidden", ()))
        head = CDREDRewardHead(int(ckpt["reward_head"]["x_dim"]), int(ckpt["action_dim"]), CDREDConfig(**rc))
    overrides = {} if plan is None else {"plan": bool(plan)}
    agent = TDMPC2Agent.load(path, device=device, reward_head=head, **overrides)
    return agent, extra
