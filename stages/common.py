"""What several stages share: turning a user's DATASET / AGENT argument into a file and a cache key,
and loading an agent checkpoint for acting."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

from cdred_pipeline.artifacts import ArtifactStore, file_sha256, verify_file
from cdred_pipeline.errors import CdredError, CheckpointError, DatasetError, UsageError

DATASET_NAME = "demos.zarr"
AGENT_NAME = "agent.pt"


def hash_files(h: Any, folder: Path) -> None:
    """Feed the relative names and bytes of every file under ``folder`` into the hash ``h``."""
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)


def artifact_of(path: Path) -> tuple[str, str] | None:
    """(stage, key) of the complete artifact whose folder holds ``path``, or None."""
    from cdred_pipeline.artifacts import read_manifest

    parent = Path(path).resolve().parent
    if not (parent / "manifest.json").is_file():
        return None
    try:
        m = read_manifest(parent)
    except CdredError:
        return None
    if m.get("status") == "complete" and parent.name == m.get("key"):
        return str(m["stage"]), str(m["key"])
    return None


def find_artifact(store: ArtifactStore, key_prefix: str) -> Any:
    """The artifact whose key starts with ``key_prefix``, or None when there is none; an ambiguous prefix
    stays the store's one-line error (it names the candidates)."""
    if not any(a.key.startswith(key_prefix) for a in store.list()):
        return None
    return store.find(key_prefix)


def dataset_path(arg: str | Path, store: ArtifactStore | None = None) -> Path:
    """DATASET as given on the command line: a path to a ``.zarr`` store, an artifact folder holding
    ``demos.zarr``, or an artifact key (prefix) in ``store`` -> the store's path."""
    p = Path(arg)
    if p.exists():
        if (p / "manifest.json").is_file() and (p / DATASET_NAME).is_dir():
            return p / DATASET_NAME
        return p
    if store is not None and str(arg) and "/" not in str(arg):
        art = find_artifact(store, str(arg))
        if art is not None:
            if not art.complete:
                raise DatasetError(f"artifact {art.stage}/{art.key} is not complete (status "
                                   f"{art.manifest.get('status')!r}); finish its stage first")
            ds = art.path / DATASET_NAME
            if not ds.is_dir():
                raise DatasetError(f"artifact {art.stage}/{art.key} holds no {DATASET_NAME}; pass a dataset path")
            return ds
    raise DatasetError(f"{arg}: no such dataset path, and no artifact with that key under "
                       f"{store.root if store else 'the work dir'} (`cdred status` lists them)")


def resolve_dataset(arg: str, store: ArtifactStore) -> tuple[Path, str]:
    """DATASET (see :func:`dataset_path`) and the cache key of the input: the artifact key when it is
    the output of a complete artifact, else a hash of the store's files (a moved copy keeps its key)."""
    path = dataset_path(arg, store)
    if not path.is_dir():
        raise DatasetError(f"{arg}: not a zarr dataset folder; pass a demos.zarr or an artifact key")
    owner = artifact_of(path)
    if owner is not None:
        return path, owner[1]
    h = hashlib.sha256()
    hash_files(h, path)
    return path, "sha256:" + h.hexdigest()[:32]


def dataset_scores(arg: str, store: ArtifactStore) -> dict[str, Any]:
    """The ``scores`` attrs (random and expert return) of a dataset given as path or artifact key."""
    from cdred_pipeline.datasets import open_dataset

    path, _ = resolve_dataset(arg, store)
    return dict(open_dataset(path).attrs.get("scores", {}))


def resolve_checkpoint(arg: str, store: ArtifactStore) -> tuple[Path, str]:
    """AGENT as a checkpoint file, an artifact folder holding ``agent.pt``, or an artifact key; a missing one
    is the same CheckpointError (exit 4) as a missing dataset's DatasetError."""
    p = Path(arg)
    if p.is_dir():
        p = p / AGENT_NAME
    if p.is_file():
        check_checkpoint_file(p)
        parent = p.parent
        if (parent / "manifest.json").is_file() and not parent.name.startswith("."):
            return p, parent.name
        return p, "sha256:" + file_sha256(p)[:16]
    art = find_artifact(store, arg) if arg and p.suffix != ".pt" and "/" not in arg else None
    if art is None:
        raise CheckpointError(f"{arg}: no such checkpoint file, and no artifact with that key under {store.root} "
                              "(`cdred status` lists them)")
    if not art.complete or not (art.path / AGENT_NAME).is_file():
        raise UsageError(f"artifact {art.stage}/{art.key} has no finished {AGENT_NAME} "
                         f"(status {art.manifest.get('status')}); pass an experts or imitate artifact")
    return art.path / AGENT_NAME, art.key


def check_checkpoint_file(path: str | Path) -> Path:
    """``path`` when it is a file torch wrote (a zip archive, as ``torch.save`` writes), else one clear
    CheckpointError line, before torch reads it (torch's own message on foreign bytes is many lines)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file; pass an agent.pt written by collect-experts or imitate")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(f"{p} is not a cdred agent checkpoint (not a file torch wrote); pass an agent.pt "
                              "written by collect-experts or imitate")
    return p


def read_agent_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of an agent file; every unreadable or foreign file is a CheckpointError (exit 4)."""
    from cdred_pipeline.agent import TDMPC2Agent

    check_checkpoint_file(path)
    verify_file(path)  # a checkpoint inside an artifact must match the sha256 its manifest recorded
    return TDMPC2Agent.read_checkpoint(path)


def load_agent(path: str | Path, *, device: str = "auto", plan: bool | None = None) -> tuple[Any, dict[str, Any]]:
    """Load any cdred agent checkpoint (expert or imitation) for acting.

    Imitation checkpoints carry their reward model's config in ``extra["reward_config"]``; the CDRED
    head is rebuilt from it so its weights load. ``plan`` overrides how the agent acts (MPPI or the
    policy prior). Returns the agent and the checkpoint's ``extra`` (task, obs kind, preset, scores).
    """
    from cdred_pipeline.agent import TDMPC2Agent

    ckpt = read_agent_checkpoint(path)
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
