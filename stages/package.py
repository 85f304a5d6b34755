"""`cdred package`: inspect, validate, merge, export and import episode stores (docs/design.md §6).

Each function takes paths (:func:`inspect` also an artifact key), does the work through
:mod:`cdred_pipeline.datasets` and returns plain data the CLI prints. Every output is written under
its lock, to a temporary name, and renamed when complete, so an interrupted or concurrent command
never leaves an output that looks finished; an output that is, contains or lies inside an input is
refused. ``progress`` (default True) draws a bar of episodes on stderr while merge, export and import
copy, so that what a command prints on stdout stays its result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdred_pipeline.datasets import open_dataset, validate
from cdred_pipeline.datasets import convert
from cdred_pipeline.datasets.reader import dir_size
from cdred_pipeline.errors import UsageError
from cdred_pipeline.os_errors import human_bytes

if TYPE_CHECKING:
    from cdred_pipeline.artifacts import ArtifactStore

__all__ = ["inspect", "dataset_of", "format_summary", "validate_dataset", "merge", "export", "import_",
           "EXPORT_FORMATS", "IMPORT_FORMATS"]

EXPORT_FORMATS = ("hdf5", "parquet", "lerobot", "minari")
IMPORT_FORMATS = ("auto", "hdf5", "parquet", "pickle", "minari")


def _mean_std(x: np.ndarray) -> dict[str, float | None]:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(x.mean()), "std": float(x.std())}


def dataset_of(dataset: str | os.PathLike, store: "ArtifactStore | None" = None) -> Path:
    """DATASET as a store path: a path (a ``.zarr`` store, or an artifact folder holding
    ``demos.zarr``), or, with ``store``, the key (prefix) of a demos or render-visual artifact in it.
    A path that does not exist stays a path when it looks like one (``/`` or ``.zarr``) or no store is
    given, so that opening it says "no such file or directory"."""
    from cdred_pipeline.stages.common import dataset_path

    p = Path(dataset)
    if p.exists():
        return dataset_path(p)
    if store is None or p.suffix == ".zarr" or "/" in str(dataset):
        return p
    return dataset_path(str(dataset), store)


def inspect(dataset: str | os.PathLike, store: "ArtifactStore | None" = None) -> dict[str, Any]:
    """Summary of a store (a path, or a demos/render-visual artifact key in ``store``, see
    :func:`dataset_of`): counts, dims, return and success mean ± std (no success for DMControl, which has
    no success flag), arrays, size and compression."""
    from cdred_pipeline.envs import reports_success

    ds = open_dataset(dataset_of(dataset, store))
    storage = ds.storage()
    nbytes = sum(v["nbytes"] for v in storage.values())
    stored = sum(v["stored"] for v in storage.values())
    lengths = ds.lengths
    return {
        "path": str(ds.path),
        "task": ds.task,
        "layout_version": ds.version,
        "episodes": ds.num_episodes,
        "steps": ds.num_steps,
        "obs_dim": ds.obs_dim,
        "action_dim": ds.action_dim,
        "physics_state_dim": ds.physics_state_dim,
        "cameras": {c: list(ds.image_shape(c)) for c in ds.cameras},
        "episode_length": {"mean": float(lengths.mean()) if len(lengths) else None,
                           "min": int(lengths.min()) if len(lengths) else None,
                           "max": int(lengths.max()) if len(lengths) else None},
        "return": _mean_std(ds.returns),
        "success": _mean_std(ds.successes if reports_success(ds.task) else np.zeros(0)),  # DMControl: none
        "scores": ds.attrs.get("scores", {}),
        "source": ds.attrs.get("source", {}),
        "arrays": storage,
        "bytes_uncompressed": nbytes,
        "bytes_stored": stored,
        "size_on_disk": dir_size(ds.path),
        "compression_ratio": (nbytes / stored) if stored else None,
    }


def _pm(d: dict[str, float | None], fmt: str = ".4g") -> str:
    if d.get("mean") is None:
        return "-"
    return f"{d['mean']:{fmt}} ± {d['std']:{fmt}}"


def format_summary(s: dict[str, Any]) -> str:
    """The text `cdred package inspect` prints for :func:`inspect`'s summary."""
    el = s["episode_length"]
    lines = [
        f"{s['path']}  (cdred dataset layout v{s['layout_version']})",
        f"  task            {s['task']}",
        f"  episodes        {s['episodes']}   steps {s['steps']}"
        + (f"   length mean {el['mean']:.1f} (min {el['min']}, max {el['max']})" if el["mean"] is not None else ""),
        f"  dims            obs {s['obs_dim']}   action {s['action_dim']}   physics_state {s['physics_state_dim']}"
        + ("".join(f"   rgb/{c} {'x'.join(map(str, sh))}" for c, sh in s["cameras"].items())),
        f"  return          {_pm(s['return'])}",
        f"  success         {_pm(s['success'], '.3f')}",
        f"  scores          random {s['scores'].get('random')}   expert {s['scores'].get('expert')}",
        f"  source          {s['source'].get('kind', '-')}",
        f"  size on disk    {human_bytes(s['size_on_disk'])}   (arrays {human_bytes(s['bytes_stored'])} stored, "
        f"{human_bytes(s['bytes_uncompressed'])} uncompressed, ratio {s['compression_ratio']:.2f}x)"
        if s["compression_ratio"] else f"  size on disk    {human_bytes(s['size_on_disk'])}",
        "  keys",
    ]
    width = max((len(k) for k in s["arrays"]), default=10)
    for key, a in s["arrays"].items():
        shape = str(tuple(a["shape"]))
        ratio = f"{a['nbytes'] / a['stored']:.2f}x" if a["stored"] else "-"
        lines.append(f"    {key:<{width}}  {shape:<20} {a['dtype']:<8} chunk {a['chunks'][0]:<7} "
                     f"{human_bytes(a['stored']):>10}  {ratio}")
    return "\n".join(lines)


def validate_dataset(path: str | os.PathLike, *, deep: bool = True) -> list[str]:
    """Every problem in the store (empty list: valid)."""
    return validate(path, deep=deep)


def merge(inputs: list[str | os.PathLike], out: str | os.PathLike, *, force: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Merge stores of one task and dims into ``out`` (``progress``: a bar on stderr); returns the output's summary."""
    convert.merge_datasets(inputs, out, overwrite=force, progress=progress)
    return inspect(out)


def export(path: str | os.PathLike, fmt: str, out: str | os.PathLike, *, force: bool = False,
           dataset_id: str | None = None, fps: int | None = None,
           valid_fraction: float | None = None, progress: bool = True) -> Path:
    """Export a store to robomimic HDF5 (``valid_fraction``: share of demos, the last ones, in
    ``mask/valid``; default 0.1), plain parquet tables (pyarrow / pandas), a LeRobot v3.0 folder (``fps``:
    its frame rate) or a Minari dataset ``dataset_id`` (default ``cdred/<task>-v0``) under the data root
    ``out``; ``progress``: a bar of episodes on stderr."""
    if valid_fraction is not None and fmt != "hdf5":
        raise UsageError(f"--valid-fraction: only --format hdf5 has a train/valid mask, not {fmt}")
    if fmt == "hdf5":
        vf = convert.DEFAULT_VALID_FRACTION if valid_fraction is None else valid_fraction
        return convert.export_hdf5(path, out, overwrite=force, valid_fraction=vf, progress=progress)
    if fmt == "parquet":
        return convert.export_parquet(path, out, overwrite=force, progress=progress)
    if fmt == "lerobot":
        from cdred_pipeline.datasets.lerobot import export_lerobot

        return export_lerobot(path, out, fps=fps, overwrite=force, progress=progress)
    if fmt == "minari":
        from cdred_pipeline.datasets import minari_io

        ds_id = dataset_id or minari_io.default_dataset_id(open_dataset(path).task)
        return minari_io.export_minari(path, ds_id, out, overwrite=force, progress=progress)
    raise UsageError(f"--format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")


def _import_minari(source: str | os.PathLike, out: str | os.PathLike, task: str | None,
                   minari_root: str | os.PathLike | None, force: bool, progress: bool) -> dict[str, Any]:
    """Import a Minari dataset (a folder, or an id under ``minari_root``) and return the store's summary."""
    from cdred_pipeline.datasets import minari_io

    task = convert.canonical_task(task) if task is not None else None
    minari_io.import_minari(source, out, task, root=minari_root, overwrite=force, progress=progress)
    return inspect(out)


def import_(file: str | os.PathLike, out: str | os.PathLike, *, task: str | None = None, fmt: str = "auto",
            trust_pickle: bool = False, force: bool = False,
            minari_root: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Import an HDF5 / parquet / pickle file or a Minari dataset (folder, or id under ``minari_root``) into
    a zarr store (``progress``: a bar of episodes on stderr); returns the new store's summary. After a
    pickle import the summary's ``notice`` is the line to print: code from the file ran, and its sha256."""
    from cdred_pipeline.datasets.minari_io import is_minari_dataset

    if fmt == "minari" or (fmt == "auto" and is_minari_dataset(file)):
        return _import_minari(file, out, task, minari_root, force, progress)
    kind = convert.detect_format(file) if fmt == "auto" else fmt
    convert.import_file(file, out, task=task, fmt=kind, trust_pickle=trust_pickle, overwrite=force,
                        progress=progress)
    summary = inspect(out)
    sha256 = summary["source"].get("sha256")
    if kind == "pickle" and sha256:
        summary["notice"] = convert.pickle_notice(file, sha256)
    return summary

