"""The HDF5 export in robomimic's layout, on real files: what robomimic's ``SequenceDataset`` reads
(``data`` attrs ``env_args`` with an integer env type, ``mask/train`` and ``mask/valid`` as demo-name
byte strings, demo groups with ``obs/``, ``actions``, ``rewards``, ``dones`` and ``num_samples``),
``dones`` as robomimic sets them with ``terminated`` kept apart, the import keeping the mask and
reading cdred files of the string env type (``type`` "cdred", dones = terminated), and dims checked
against the task. The ``SequenceDataset`` test runs where robomimic is importable."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_datasets_convert import LIFT_TASK, _robomimic_file, assert_same_store

from cdred_pipeline.datasets import open_dataset, validate
from cdred_pipeline.datasets.convert import (
    ROBOMIMIC_GYM_TYPE, export_hdf5, import_file, train_valid_split,
)
from cdred_pipeline.datasets.synthetic import SYNTHETIC_TASK, write_random_dataset
from cdred_pipeline.errors import DatasetError, UsageError

LENGTHS = [4, 1, 6, 3, 5]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    path, _ = write_random_dataset(tmp_path_factory.mktemp("rm") / "d.zarr", LENGTHS, obs_dim=5, action_dim=2,
                                   state_dim=4, cameras={"front": 8}, seed=5)
    return path


def mask_names(f: h5py.File, key: str) -> list[str]:
    """A filter key's demo names, decoded as robomimic's SequenceDataset does."""
    return [elem.decode("utf-8") for elem in np.array(f[f"mask/{key}"][:])]


def test_export_has_what_robomimic_reads(src, tmp_path):
    h5 = export_hdf5(src, tmp_path / "d.hdf5", valid_fraction=0.3)
    ds = open_dataset(src)
    with h5py.File(h5, "r") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args == {"env_name": SYNTHETIC_TASK, "type": 2, "env_kwargs": {}, "cdred_task": SYNTHETIC_TASK}
        assert isinstance(env_args["type"], int) and ROBOMIMIC_GYM_TYPE == 2  # robomimic EnvType.GYM_TYPE
        assert f["mask/train"].dtype.kind == "S" and f["mask/valid"].dtype.kind == "S"
        assert mask_names(f, "train") == ["demo_0", "demo_1", "demo_2"]
        assert mask_names(f, "valid") == ["demo_3", "demo_4"]  # the last ceil(0.3 * 5) = 2 demos
        assert f["data"].attrs["total"] == sum(LENGTHS)
        for i, t in enumerate(LENGTHS):
            d = f[f"data/demo_{i}"]
            assert d.attrs["num_samples"] == t
            assert d["obs/state"].shape == (t, 5) and d["obs/front_image"].shape == (t, 8, 8, 3)
            assert d["actions"].shape == (t, 2) and d["rewards"].shape == (t,)
            assert d["dones"][()].tolist() == [0] * (t - 1) + [1]  # robomimic: done at the end of every demo
            np.testing.assert_array_equal(d["terminated"][()].astype(bool), ds.episode(i)["terminated"])


def test_valid_fraction_split():
    assert train_valid_split(10, 0.1) == (list(range(9)), [9])
    assert train_valid_split(30, 0.1)[1] == [27, 28, 29]  # 0.1 * 30 is 3.0000000000000004 in floats
    assert train_valid_split(1, 0.5) == ([0], [])  # train is never empty
    assert train_valid_split(4, 0.0) == ([0, 1, 2, 3], [])
    assert train_valid_split(3, 0.99) == ([0], [1, 2])
    for bad in (1.0, -0.1, 2):
        with pytest.raises(UsageError, match=r"--valid-fraction .*: give a share in \[0, 1\)"):
            train_valid_split(5, bad)


def test_bad_valid_fraction_writes_nothing(src, tmp_path):
    with pytest.raises(UsageError, match="valid-fraction"):
        export_hdf5(src, tmp_path / "d.hdf5", valid_fraction=1.0)
    assert list(tmp_path.iterdir()) == []


def test_import_keeps_the_mask_and_is_lossless(src, tmp_path):
    back = import_file(export_hdf5(src, tmp_path / "d.hdf5"), tmp_path / "b.zarr")
    assert_same_store(src, back)
    assert open_dataset(back).attrs["import"] == {"format": "hdf5", "file": "d.hdf5",
                                                  "mask": {"train": [0, 1, 2, 3], "valid": [4]}}
    assert validate(back) == []


def _to_string_type_layout(h5: Path) -> None:
    """Rewrite an export in cdred's string-type HDF5 layout: env_args type "cdred" with the env attrs as
    kwargs, dones = terminated, no terminated datasets, no mask."""
    with h5py.File(h5, "r+") as f:
        env = json.loads(f["data"].attrs["cdred_attrs"])["env"]
        f["data"].attrs["env_args"] = json.dumps({"env_name": env["task"], "type": "cdred",
                                                  "env_kwargs": {k: v for k, v in env.items() if k != "task"}})
        for name in f["data"]:
            d = f[f"data/{name}"]
            term = d["terminated"][()]
            del d["dones"], d["terminated"]
            d.create_dataset("dones", data=term)
        del f["mask"]


def test_import_reads_string_type_files(tmp_path):
    path, eps = write_random_dataset(tmp_path / "t.zarr", [5, 7, 4], obs_dim=3, action_dim=2, state_dim=2, seed=0)
    assert [bool(e["terminated"][-1]) for e in eps] == [True, True, False]  # dones = terminated, not episode ends
    h5 = export_hdf5(path, tmp_path / "old.hdf5")
    _to_string_type_layout(h5)
    back = import_file(h5, tmp_path / "b.zarr")
    assert_same_store(path, back)
    assert "mask" not in open_dataset(back).attrs["import"]


def test_task_from_env_args_without_cdred_attrs(src, tmp_path):
    for env_args in ({"env_name": SYNTHETIC_TASK, "type": 2, "env_kwargs": {}, "cdred_task": SYNTHETIC_TASK},
                     {"env_name": SYNTHETIC_TASK, "type": "cdred", "env_kwargs": {}}):
        h5 = export_hdf5(src, tmp_path / "d.hdf5", overwrite=True)
        with h5py.File(h5, "r+") as f:
            del f["data"].attrs["cdred_attrs"]
            f["data"].attrs["env_args"] = json.dumps(env_args)
        out = import_file(h5, tmp_path / "t.zarr", overwrite=True)
        got = open_dataset(out)
        assert got.task == SYNTHETIC_TASK and got.attrs["source"]["task_from"] == "env_args"
        np.testing.assert_array_equal(got.array("data/obs")[:], open_dataset(src).array("data/obs")[:])


def test_foreign_mask_maps_demo_names_to_episodes(tmp_path):
    _robomimic_file(tmp_path / "lift.hdf5")  # demos demo_0, demo_5, demo_10
    with h5py.File(tmp_path / "lift.hdf5", "r+") as f:
        f["mask/train"] = np.array(["demo_0", "demo_5"], dtype="S")
        f["mask/valid"] = np.array(["demo_10"], dtype="S")
    out = import_file(tmp_path / "lift.hdf5", tmp_path / "l.zarr", task=LIFT_TASK)
    assert open_dataset(out).attrs["import"]["mask"] == {"train": [0, 1], "valid": [2]}
    with h5py.File(tmp_path / "lift.hdf5", "r+") as f:
        f["mask/extra"] = np.array(["demo_7"], dtype="S")
    with pytest.raises(DatasetError, match=r"lift.hdf5: mask/extra: 'demo_7' is not a demo in data/"):
        import_file(tmp_path / "lift.hdf5", tmp_path / "m.zarr", task=LIFT_TASK)
    assert not (tmp_path / "m.zarr").exists()


def test_import_refuses_dims_that_do_not_fit_the_task(tmp_path):
    _robomimic_file(tmp_path / "lift.hdf5")  # obs 13, action 7
    with pytest.raises(UsageError) as err:
        import_file(tmp_path / "lift.hdf5", tmp_path / "r.zarr", task="mw:reach")
    msg = str(err.value)
    assert "\n" not in msg and "--task mw:reach" in msg
    assert "obs_dim 13, action_dim 7 but mw:reach has obs_dim 39, action_dim 4" in msg
    assert not (tmp_path / "r.zarr").exists()


def test_validate_checks_dims_against_the_stored_task(tmp_path):
    path, _ = write_random_dataset(tmp_path / "x.zarr", [3], obs_dim=6, action_dim=3, task="mw:reach")
    problems = validate(path)
    assert any("attrs.env" in p and "obs_dim 6, action_dim 3 but mw:reach has obs_dim 39, action_dim 4" in p
               for p in problems), problems


def test_robomimic_sequence_dataset_loads_the_export(src, tmp_path):
    rm_dataset = pytest.importorskip("robomimic.utils.dataset", reason="robomimic not installed")
    obs_utils = pytest.importorskip("robomimic.utils.obs_utils")
    env_utils = pytest.importorskip("robomimic.utils.env_utils")
    from robomimic.envs.env_base import EnvType

    h5 = export_hdf5(src, tmp_path / "d.hdf5", valid_fraction=0.3)
    with h5py.File(h5, "r") as f:
        assert env_utils.get_env_type(env_meta=json.loads(f["data"].attrs["env_args"])) == EnvType.GYM_TYPE
    obs_utils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": ["state"], "rgb": ["front_image"]}})
    ds = open_dataset(src)
    for key, demos in (("train", [0, 1, 2]), ("valid", [3, 4])):
        seq = rm_dataset.SequenceDataset(str(h5), obs_keys=("state", "front_image"),
                                         dataset_keys=("actions", "rewards", "dones"), filter_by_attribute=key,
                                         hdf5_cache_mode="low_dim", load_next_obs=True)
        assert len(seq) == sum(LENGTHS[i] for i in demos)
        item = seq[0]
        ep = ds.episode(demos[0])
        np.testing.assert_array_equal(item["obs"]["state"][0], ep["obs"][0])
        np.testing.assert_array_equal(item["actions"][0], ep["action"][0])
        assert item["obs"]["front_image"].shape[-3:] in ((8, 8, 3), (3, 8, 8))
        last = seq[LENGTHS[demos[0]] - 1]
        assert last["dones"][0] == 1
