"""The artifact store: keys, completion, locks, resume after SIGKILL, concurrent writers, bad manifests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cdred_pipeline.artifacts import ArtifactStore, artifact_key, machine_facts, read_manifest, verify_file
from cdred_pipeline.errors import CdredError

# A writer that records one unit file per step, sleeping between, so a test can kill it mid-way.
WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cdred_pipeline.artifacts import ArtifactStore
    root, n, delay, tag = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    art = ArtifactStore(root).begin("demo", 1, {"n": n}, {})
    if art.complete:
        print("SKIPPED", flush=True)
        sys.exit(0)
    for i in range(n):
        if f"u{i}" in art.done_units():
            continue
        (art.path / f"u{i}.txt").write_text(f"{i} {tag}")
        art.record_unit(f"u{i}")
        print(f"UNIT {i}", flush=True)
        time.sleep(delay)
    art.complete_with({"units": n}, writer=tag)
    print("DONE", flush=True)
    """
)


def _run_writer(root: Path, n: int, delay: float, tag: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(n), str(delay), tag],
                            stdout=subprocess.PIPE, text=True, **kw)


def test_key_changes_exactly_with_read_config_and_inputs():
    base = artifact_key("imitate", 1, {"steps": 100, "seed": 0}, {"demos": "abc"})
    assert base == artifact_key("imitate", 1, {"seed": 0, "steps": 100}, {"demos": "abc"})  # order-free
    assert base != artifact_key("imitate", 1, {"steps": 101, "seed": 0}, {"demos": "abc"})
    assert base != artifact_key("imitate", 1, {"steps": 100, "seed": 0}, {"demos": "abd"})
    assert base != artifact_key("imitate", 2, {"steps": 100, "seed": 0}, {"demos": "abc"})
    assert base != artifact_key("evaluate", 1, {"steps": 100, "seed": 0}, {"demos": "abc"})
    assert base != artifact_key("imitate", 1, {"steps": 100, "seed": 0, "extra": None}, {"demos": "abc"})


def test_complete_is_cached_and_force_redoes(tmp_path):
    store = ArtifactStore(tmp_path)
    art = store.begin("demo", 1, {"a": 1})
    assert not art.complete and art.path.name.endswith(".partial")
    (art.path / "x.txt").write_text("first")
    art.complete_with({"score": 1.0})
    assert art.path == tmp_path / "demo" / art.key and (art.path / "x.txt").read_text() == "first"
    again = store.begin("demo", 1, {"a": 1})
    assert again.complete and again.manifest["headline"] == {"score": 1.0}
    redo = store.begin("demo", 1, {"a": 1}, force=True)
    assert not redo.complete and not (redo.path / "x.txt").exists()
    # the old complete artifact stays readable until the forced run completes
    assert store.get("demo", art.key).manifest["headline"] == {"score": 1.0}
    (redo.path / "x.txt").write_text("second")
    redo.complete_with({"score": 2.0})
    assert (tmp_path / "demo" / art.key / "x.txt").read_text() == "second"
    assert [a.key for a in store.list()] == [art.key]


def test_sigkill_leaves_no_complete_artifact_and_rerun_resumes(tmp_path):
    proc = _run_writer(tmp_path, 6, 0.4, "first")
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if line.startswith("UNIT 2"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    key = artifact_key("demo", 1, {"n": 6}, {})
    assert not (tmp_path / "demo" / key).exists(), "a killed writer must not leave a complete-looking folder"
    partial = read_manifest(tmp_path / "demo" / f".{key}.partial")
    assert partial["status"] == "partial" and partial["units"][:3] == ["u0", "u1", "u2"]

    out = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), "6", "0", "second"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "UNIT 0" not in out and "UNIT 3" in out and "DONE" in out  # resumed, did not redo units 0-2
    final = ArtifactStore(tmp_path).get("demo", key)
    assert final.complete and final.manifest["resumed"] == 1
    assert final.done_units() == [f"u{i}" for i in range(6)]
    assert (final.path / "u0.txt").read_text() == "0 first" and (final.path / "u5.txt").read_text() == "5 second"


def test_two_concurrent_writers_do_not_corrupt(tmp_path):
    a = _run_writer(tmp_path, 5, 0.1, "A")
    b = _run_writer(tmp_path, 5, 0.1, "B")
    outs = [p.communicate(timeout=60)[0] for p in (a, b)]
    assert all(p.returncode == 0 for p in (a, b)), outs
    # exactly one wrote all units; the other waited for the lock and found the artifact complete
    assert sorted("SKIPPED" in o for o in outs) == [False, True], outs
    key = artifact_key("demo", 1, {"n": 5}, {})
    art = ArtifactStore(tmp_path).get("demo", key)
    writer = art.manifest["writer"]
    assert {(art.path / f"u{i}.txt").read_text() for i in range(5)} == {f"{i} {writer}" for i in range(5)}
    assert not (tmp_path / "demo" / f".{key}.partial").exists()


def test_waiting_writer_says_who_holds_the_lock(tmp_path):
    holder = _run_writer(tmp_path, 3, 0.5, "A", stderr=subprocess.PIPE)
    assert holder.stdout.readline().startswith("UNIT 0")
    waiter = _run_writer(tmp_path, 3, 0.0, "B", stderr=subprocess.PIPE)
    out, err = waiter.communicate(timeout=60)
    holder.communicate(timeout=60)
    assert waiter.returncode == 0 and "SKIPPED" in out
    assert err.count("\n") == 1 and err.startswith("waiting: another cdred process (pid ")
    assert f"pid {holder.pid} on " in err and "demo/" in err


def test_nonblocking_second_writer_gets_one_line_error(tmp_path):
    store = ArtifactStore(tmp_path)
    first = store.begin("demo", 1, {"a": 1})
    with pytest.raises(CdredError, match="another cdred process"):
        # a second store object in the same process takes a second fd: flock conflicts like another process
        ArtifactStore(tmp_path).begin("demo", 1, {"a": 1}, wait=False)
    first.release()


def test_corrupt_or_foreign_manifest_is_reported_not_overwritten(tmp_path):
    store = ArtifactStore(tmp_path)
    art = store.begin("demo", 1, {"a": 1})
    art.complete_with({})
    mpath = art.path / "manifest.json"
    mpath.write_text("{ not json")
    with pytest.raises(CdredError, match="corrupt manifest"):
        store.begin("demo", 1, {"a": 1})
    assert mpath.read_text() == "{ not json"
    mpath.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(CdredError, match="not a cdred manifest"):
        store.get("demo", art.key)
    assert [a.manifest["status"] for a in store.list()] == ["corrupt"]


def _finished(store: ArtifactStore, payload: bytes = b"weights") -> tuple:
    art = store.begin("demo", 1, {"a": 1})
    (art.path / "sub").mkdir()
    (art.path / "sub" / "chunk.0").write_bytes(b"x" * 100)
    (art.path / "agent.pt").write_bytes(payload)
    (art.path / ".store.lock").write_text("")  # writer locks are not inventoried
    return art.complete_with({}), art.key


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    store = ArtifactStore(tmp_path)
    art, key = _finished(store)
    files = art.manifest["files"]
    assert sorted(files) == ["agent.pt", "sub/chunk.0"]
    assert files["sub/chunk.0"]["bytes"] == 100 and len(files["agent.pt"]["sha256"]) == 64
    assert store.get("demo", key).key == key and store.problems(art) == []
    assert art.manifest["machine"]["cores"] == os.cpu_count() and art.manifest["machine"]["cpu"]


def test_machine_facts_name_the_cpu_generation_and_isa_that_change_floating_point_results():
    import torch

    facts = machine_facts()
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["torch_threads"] == torch.get_num_threads()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "cpu family" in cpuinfo.read_text():
        family, model = facts["cpu_family_model"].split("/")
        assert family.isdigit() and model.isdigit()


def test_files_added_to_a_complete_artifact_keep_a_concurrent_manifest_change(tmp_path):
    store = ArtifactStore(tmp_path)
    art, key = _finished(store)
    other = store.get("demo", key)  # another reader changes the manifest after ``art`` was read
    other.update(note="kept")
    (art.path / "tb").mkdir()
    (art.path / "tb" / "events.1").write_bytes(b"e" * 7)
    store.add_files(art, art.path / "tb")
    on_disk = json.loads((art.path / "manifest.json").read_text())
    assert on_disk["note"] == "kept" and on_disk["files"]["tb/events.1"]["bytes"] == 7
    assert art.manifest == on_disk and store.problems(art) == []


def test_damaged_cached_artifact_is_refused_on_reuse(tmp_path):
    store = ArtifactStore(tmp_path)
    art, key = _finished(store)
    (art.path / "sub" / "chunk.0").unlink()
    with pytest.raises(CdredError, match=r"demo/\w+ is damaged: sub/chunk.0 is missing; rerun with --force"):
        store.begin("demo", 1, {"a": 1})
    redone = store.begin("demo", 1, {"a": 1}, force=True)
    assert not redone.complete
    redone.complete_with({})
    assert store.get("demo", key).complete
    (art.path / "stray.bin").write_bytes(b"1")
    with pytest.raises(CdredError, match="stray.bin is not in the manifest"):
        store.get("demo", key)


def test_changed_checkpoint_is_caught_on_load_and_by_verify(tmp_path):
    store = ArtifactStore(tmp_path)
    art, _ = _finished(store, b"weights+")
    verify_file(art.path / "agent.pt")  # whole: passes
    (art.path / "agent.pt").write_bytes(b"weights-")  # same size, other contents
    with pytest.raises(CdredError, match="agent.pt: contents differ from the sha256"):
        verify_file(art.path / "agent.pt")
    assert store.problems(art, hashes=False) == []  # sizes alone cannot see it
    [(found, problems)] = store.verify()
    assert found.key == art.key and problems == ["agent.pt has changed contents (sha256 differs)"]
    outside = tmp_path / "loose.pt"
    outside.write_bytes(b"anything")
    verify_file(outside)  # a file of no artifact is not checked


def test_status_and_show_cli(tmp_path):
    store = ArtifactStore(tmp_path)
    store.begin("experts", 1, {"task": "dmc:cartpole-balance"}).complete_with({"expert_return": 812.5})
    store.begin("imitate", 1, {"steps": 10})  # left partial
    env = {**os.environ, "CDRED_WORKDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "cli", "status"], capture_output=True, text=True, env=env,
                         timeout=60, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["stage", "key", "status", "age"]
    assert "experts" in lines[1] and "complete" in lines[1] and "expert_return=812.5" in lines[1]
    assert "imitate" in lines[2] and "partial" in lines[2]
    key = store.list()[0].key
    shown = subprocess.run([sys.executable, "-m", "cli", "show", key[:6]], capture_output=True, text=True,
                           env=env, timeout=60, check=True).stdout
    assert json.loads(shown.split("\n", 1)[1])["key"] == key
    bad = subprocess.run([sys.executable, "-m", "cli", "show", "nosuchkey"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
