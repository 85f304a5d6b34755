"""Cached stage artifacts (docs/design.md §5): manifests, content keys, atomic completion, locks, resume.

An artifact is a folder ``<workdir>/<stage>/<key>/`` holding ``manifest.json``. Its key is a hash of
(stage, stage version, the resolved config keys the stage reads, the keys of its input artifacts), so
it changes exactly when one of those changes. Work happens in ``<workdir>/<stage>/.<key>.partial/``
under an exclusive lock; :meth:`Artifact.complete` writes the final manifest and renames the folder,
so a folder without ``.partial`` is always complete. Finished work units (episodes, checkpoints) are
recorded in the partial manifest so a killed run resumes where it stopped. A complete manifest lists
every file with its size and sha256: reuse checks that each is there with its size, a checkpoint load
checks its hash (:func:`verify_file`), and :meth:`ArtifactStore.verify` hashes everything.

A store made with a ``replay`` record writes it into every manifest it begins: how to make the artifact
again (the command and its full settings, which ``cdred rerun`` replays); the record is not part of the key.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cdred_pipeline import __version__
from cdred_pipeline.errors import CdredError, InputFileError, NotMadeError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
KEY_LENGTH = 16


def _plain(value: Any) -> Any:
    """Turn dataclasses, tuples, paths and numpy scalars into JSON-stable plain Python values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def artifact_key(stage: str, version: int, config: Mapping[str, Any] | Any,
                 inputs: Mapping[str, str] | None = None) -> str:
    """Content key of an artifact: hash(stage, stage version, config, input keys)."""
    payload = json.dumps(
        {"stage": stage, "version": int(version), "config": _plain(config), "inputs": _plain(inputs or {})},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def environment_versions() -> dict[str, str]:
    """Package and simulator versions recorded in every manifest (missing packages are skipped)."""
    from importlib import metadata

    versions = {"cdred": __version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "mujoco", "dm_control", "metaworld", "gymnasium", "zarr", "mani_skill2", "sapien"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_facts() -> dict[str, Any]:
    """What besides the seed changes a run's floating-point results, recorded in every manifest: the
    CPU (its vector kernels: name, family/model and the instruction set torch dispatches to), the core
    count and torch's thread count (the order of reductions). Virtual machines often show one generic
    name ("AMD EPYC") for CPUs of different generations, hence the family/model and the ISA."""
    facts: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    facts.update(_cpuinfo())
    torch = sys.modules.get("torch")  # only when the stage loaded it: `status` and `package` stay torch-free
    if torch is not None:
        facts["torch_threads"] = torch.get_num_threads()
        facts["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return facts


def _cpuinfo() -> dict[str, str]:
    """The first CPU's model name and "family/model" from /proc/cpuinfo (nothing where there is none)."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first.splitlines()))
    out = {"cpu": fields["model name"]} if fields.get("model name") else {}
    if "cpu family" in fields and "model" in fields:
        out["cpu_family_model"] = f"{fields['cpu family']}/{fields['model']}"
    return out


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_figure_atomic(fig: Any, path: "str | Path", **savefig_kwargs: Any) -> None:
    """Write a matplotlib figure to ``path`` through a hidden temporary file and a rename, so a
    killed run never leaves a half-written PNG where a plot is expected."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, **savefig_kwargs)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in blocks)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _listed(path: Path) -> bool:
    """Files a manifest inventories: all but the manifest itself and writer lock files (``*.lock``),
    which a later reader may create."""
    return path.is_file() and not path.is_symlink() and path.name != MANIFEST and not path.name.endswith(".lock")


def file_inventory(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``folder`` that a manifest lists."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(folder.rglob("*")) if _listed(p)}


def inventory_problems(folder: Path, files: Mapping[str, Mapping[str, Any]], *, hashes: bool) -> list[str]:
    """What differs between ``folder`` and its manifest's file list: missing, resized, extra files, and
    (with ``hashes``) changed contents. Empty when the folder is whole."""
    folder = Path(folder)
    problems = []
    for rel, rec in files.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != rec["bytes"]:
            problems.append(f"{rel} has {path.stat().st_size} bytes, not {rec['bytes']}")
        elif hashes and file_sha256(path) != rec["sha256"]:
            problems.append(f"{rel} has changed contents (sha256 differs)")
    extra = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if _listed(p)
                   and p.relative_to(folder).as_posix() not in files)
    problems += [f"{rel} is not in the manifest" for rel in extra]
    return problems


def _manifest_above(path: Path, levels: int = 4) -> Path | None:
    """The nearest folder at or above ``path``'s parent (up to ``levels``) holding a manifest."""
    for folder in list(Path(path).resolve().parents)[:levels]:
        if (folder / MANIFEST).is_file():
            return folder
    return None


def verify_file(path: "str | os.PathLike") -> None:
    """Check a file (a checkpoint before it is loaded) against the sha256 its artifact's manifest
    recorded; a mismatch is a one-line CdredError naming the file. Files outside an artifact, or in an
    artifact that lists no files, pass unchecked."""
    path = Path(path)
    folder = _manifest_above(path)
    if folder is None:
        return
    try:
        files = read_manifest(folder).get("files") or {}
    except CdredError:
        return
    rec = files.get(path.resolve().relative_to(folder).as_posix())
    if rec is not None and file_sha256(path) != rec["sha256"]:
        raise InputFileError(f"{path}: contents differ from the sha256 its artifact recorded; the file is damaged "
                             "or was edited: redo it with --force (or restore it)")


def read_manifest(folder: Path) -> dict:
    """Read and check a manifest; a corrupt or foreign one raises CdredError (never overwritten)."""
    return read_manifest_file(Path(folder) / MANIFEST)


def read_manifest_file(path: Path) -> dict:
    """Read and check the manifest file ``path`` (also a copy under another name)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CdredError(f"{path}: no such manifest; {path.parent} is not a cdred artifact") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CdredError(f"{path}: corrupt manifest ({exc}); move the folder away or rerun with --force") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or "key" not in data or "stage" not in data:
        raise CdredError(f"{path}: not a cdred manifest (format {MANIFEST_FORMAT}); refusing to touch it")
    return data


@dataclasses.dataclass
class Artifact:
    """One stage output folder. ``path`` is where the stage writes; ``complete`` says if it is done."""

    store: "ArtifactStore"
    stage: str
    key: str
    path: Path
    manifest: dict
    _lock_fh: Any = dataclasses.field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    @property
    def final_path(self) -> Path:
        """The folder the artifact has once complete (``path`` is the ``.partial`` one until then):
        what a manifest records as the place of its files."""
        return self.store.folder(self.stage, self.key)

    # ----------------------------------------------------------------------------- work units
    def done_units(self) -> list[str]:
        """Work units recorded as finished by an earlier (possibly killed) run, in order."""
        return list(self.manifest.get("units", []))

    def record_unit(self, name: str, **info: Any) -> None:
        """Record a finished work unit (after its files are durably written)."""
        if name not in self.manifest["units"]:
            self.manifest["units"].append(name)
        if info:
            self.manifest.setdefault("unit_info", {})[name] = _plain(info)
        self._save()

    def update(self, **fields: Any) -> None:
        """Merge fields (headline figures, timings, notes) into the manifest and save it."""
        for k, v in fields.items():
            if isinstance(v, Mapping) and isinstance(self.manifest.get(k), dict):
                self.manifest[k].update(_plain(v))
            else:
                self.manifest[k] = _plain(v)
        self._save()

    def _save(self) -> None:
        self.manifest["updated"] = time.time()
        _write_json_atomic(self.path / MANIFEST, self.manifest)

    # ----------------------------------------------------------------------------- completion
    def complete_with(self, headline: Mapping[str, Any] | None = None, **fields: Any) -> "Artifact":
        """Mark complete: write the final manifest, then atomically rename partial -> final folder."""
        if self.complete:
            return self
        self.manifest["status"] = "complete"
        self.manifest["files"] = file_inventory(self.path)
        self.manifest["finished"] = time.time()
        self.manifest["timings"]["wall_s"] = round(self.manifest["finished"] - self.manifest["created"], 3)
        if headline:
            self.manifest["headline"] = _plain(headline)
        for k, v in fields.items():
            self.manifest[k] = _plain(v)
        self._save()
        final = self.store.folder(self.stage, self.key)
        if final.exists():  # --force: replace the old complete artifact only now that the new one is whole
            trash = final.with_name(f".{self.key}.old{os.getpid()}")
            os.replace(final, trash)
            os.replace(self.path, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.path, final)
        self.path = final
        self.release()
        logger.info("%s/%s: complete in %.1f s (%d files)", self.stage, self.key,
                    self.manifest["finished"] - self.manifest["created"], len(self.manifest["files"]))
        return self

    def release(self) -> None:
        """Release the writer lock (idempotent)."""
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _lock_holder(fh: Any) -> str:
    """Who holds a lock file, as its holder wrote it ("pid N on HOST since T"), for wait messages."""
    fh.seek(0)
    line = fh.read().strip()
    return f"another cdred process ({line})" if line else "another cdred process"


class ArtifactStore:
    """The work dir: ``<root>/<stage>/<key>/`` folders with manifests, plus locks in ``<root>/.locks``."""

    def __init__(self, root: str | os.PathLike, notify: Callable[[str], None] | None = None,
                 replay: Mapping[str, Any] | None = None, read_only: bool = False) -> None:
        self.root = Path(root)
        self.notify = notify or _to_stderr
        self.replay = _plain(dict(replay)) if replay is not None else None  # written into each new manifest
        self.read_only = read_only  # begin() gives complete artifacts only: NotMadeError for any other

    def folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial_folder(self, stage: str, key: str) -> Path:
        return self.root / stage / f".{key}.partial"

    # --------------------------------------------------------------------------------- lookup
    def get(self, stage: str, key: str) -> Artifact | None:
        """The complete artifact of this stage and key, or None."""
        folder = self.folder(stage, key)
        if not folder.is_dir():
            return None
        manifest = read_manifest(folder)
        if manifest.get("status") != "complete" or manifest["key"] != key:
            raise CdredError(f"{folder}: manifest says status={manifest.get('status')!r}, key={manifest['key']!r}; "
                             "the folder was edited by hand; move it away or rerun with --force")
        art = Artifact(self, stage, key, folder, manifest)
        self.check_whole(art, hashes=False)
        return art

    def check_whole(self, art: Artifact, *, hashes: bool) -> None:
        """Raise a one-line CdredError when a complete artifact's files differ from its manifest's list
        (missing, resized, unlisted; changed contents too with ``hashes``)."""
        problems = self.problems(art, hashes=hashes)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise InputFileError(f"{art.stage}/{art.key} is damaged: {problems[0]}{more}; rerun with --force to redo it")

    def problems(self, art: Artifact, *, hashes: bool = True) -> list[str]:
        """The differences between a complete artifact's folder and its manifest's file list (none for
        artifacts whose manifest lists no files)."""
        files = art.manifest.get("files")
        return inventory_problems(art.path, files, hashes=hashes) if files is not None else []

    def verify(self) -> list[tuple[Artifact, list[str]]]:
        """Every complete artifact with the problems a full check (sizes and sha256) finds in it."""
        return [(a, self.problems(a)) for a in self.list() if a.complete]

    def find(self, key_prefix: str) -> Artifact:
        """The artifact (complete or partial) whose key starts with ``key_prefix`` (unique)."""
        hits = [a for a in self.list() if a.key.startswith(key_prefix)]
        if not hits:
            raise CdredError(f"no artifact with key {key_prefix!r} under {self.root}; `cdred status` lists them", exit_code=2)
        if len({(a.stage, a.key) for a in hits}) > 1:
            raise CdredError(f"key prefix {key_prefix!r} is ambiguous: " + ", ".join(f"{a.stage}/{a.key}" for a in hits),
                             exit_code=2)
        return hits[0]

    def list(self) -> list[Artifact]:
        """Every artifact under the work dir (complete and partial), oldest first; bad manifests are listed too."""
        out: list[Artifact] = []
        if not self.root.is_dir():
            return out
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for folder in sorted(stage_dir.iterdir()):
                if not folder.is_dir() or ".old" in folder.name:
                    continue
                try:
                    manifest = read_manifest(folder)
                except CdredError as exc:
                    manifest = {"stage": stage_dir.name, "key": folder.name.strip(".").removesuffix(".partial"),
                                "status": "corrupt", "error": str(exc), "created": folder.stat().st_mtime}
                out.append(Artifact(self, stage_dir.name, manifest["key"], folder, manifest))
        return sorted(out, key=lambda a: a.manifest.get("created", 0))

    # --------------------------------------------------------------------------------- writing
    @contextmanager
    def _lock(self, stage: str, key: str, wait: bool) -> Iterator[Any]:
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fh = open(lock_dir / f"{stage}-{key}.lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fh)
            if not wait:
                fh.close()
                raise CdredError(f"{holder} is writing {stage}/{key}; wait for it to finish") from None
            self.notify(f"waiting: {holder} is writing {stage}/{key}; this run goes on when it finishes")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {platform.node()} since {time.strftime('%H:%M:%S')}\n")
        fh.flush()
        yield fh

    def add_files(self, art: Artifact, folder: Path) -> None:
        """List the files under ``folder`` (made inside the complete ``art``) in its manifest's inventory: read
        again and written under the artifact's lock, so a concurrent change to the manifest is kept."""
        with self._lock(art.stage, art.key, wait=True) as fh:
            try:
                manifest = read_manifest(art.path)
                if isinstance(manifest.get("files"), dict):
                    rel = Path(folder).resolve().relative_to(art.path.resolve()).as_posix()
                    manifest["files"].update({f"{rel}/{name}": rec for name, rec in file_inventory(folder).items()})
                    manifest["updated"] = time.time()
                    _write_json_atomic(art.path / MANIFEST, manifest)
                art.manifest = manifest
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()

    def begin(self, stage: str, version: int, config: Mapping[str, Any] | Any,
              inputs: Mapping[str, str] | None = None, *, force: bool = False, wait: bool = True,
              description: str = "") -> Artifact:
        """Open the artifact for this (stage, version, config, inputs).

        Returns the complete artifact if one exists (and not ``force``); a read-only store raises
        NotMadeError for any other; otherwise takes the writer
        lock (waiting for another writer when ``wait``; the second writer then finds it complete) and
        returns a partial artifact to write into, resuming the recorded units of an earlier run.
        """
        key = artifact_key(stage, version, config, inputs)
        logger.debug("%s/%s: key of version %s, config %s, inputs %s", stage, key, version, _plain(config), _plain(inputs))
        if not force:
            done = self.get(stage, key)
            if done is not None:
                logger.info("%s/%s: complete already, taken from the cache", stage, key)
                return done
        if self.read_only:
            raise NotMadeError(f"{stage}/{key} is not made yet (read-only look at {self.root})")
        ctx = self._lock(stage, key, wait)
        fh = ctx.__enter__()
        try:
            if not force:  # another writer may have finished while we waited for the lock
                done = self.get(stage, key)
                if done is not None:
                    fcntl.flock(fh, fcntl.LOCK_UN)
                    fh.close()
                    return done
            partial = self.partial_folder(stage, key)
            manifest = None
            if partial.is_dir() and not force:
                try:
                    manifest = read_manifest(partial)
                    if manifest.get("key") != key:
                        manifest = None
                except CdredError:
                    manifest = None  # a partial folder with a torn manifest holds nothing we can trust
            if manifest is None:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                manifest = {
                    "format": MANIFEST_FORMAT, "stage": stage, "stage_version": int(version), "key": key,
                    "config": _plain(config), "inputs": _plain(inputs or {}), "versions": environment_versions(),
                    "machine": machine_facts(),
                    "status": "partial", "created": time.time(), "units": [], "timings": {}, "headline": {},
                    "description": description, "resumed": 0,
                }
                if self.replay is not None:
                    manifest["replay"] = self.replay
                logger.info("%s/%s: new artifact (%s)", stage, key, description or "no description")
            else:
                manifest["resumed"] = int(manifest.get("resumed", 0)) + 1
                logger.info("%s/%s: resuming after %d finished unit(s)", stage, key, len(manifest.get("units", [])))
                if machine_facts() != manifest.get("machine"):  # floating-point results may differ after this
                    manifest.setdefault("resumed_on", []).append(machine_facts())
            art = Artifact(self, stage, key, partial, manifest, _lock_fh=fh)
            art._save()
            return art
        except BaseException:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
            raise
