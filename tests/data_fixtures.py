"""Writers of tiny data files in the real on-disk layouts of the study's data sets (for tests)."""
from __future__ import annotations

import json
import os

import numpy as np


def write_d4rl_hdf5(path: str, episode_lengths: list[int], obs_dim: int = 11, act_dim: int = 3, seed: int = 0,
                    last_is_timeout: bool = True) -> dict[str, np.ndarray]:
    """D4RL layout: observations/actions/rewards/terminals/timeouts, one row per step. Episodes alternate
    ending in a terminal and a timeout; the last one ends in a timeout when `last_is_timeout`."""
    import h5py

    rng = np.random.default_rng(seed)
    steps = sum(episode_lengths)
    arrays = {"observations": rng.normal(size=(steps, obs_dim)).astype(np.float32),
              "actions": rng.uniform(-1, 1, size=(steps, act_dim)).astype(np.float32),
              "rewards": rng.normal(size=steps).astype(np.float32),
              "terminals": np.zeros(steps, bool), "timeouts": np.zeros(steps, bool)}
    ends = np.cumsum(episode_lengths) - 1
    for i, end in enumerate(ends):
        if i == len(ends) - 1 and not last_is_timeout:
            break
        arrays["timeouts" if i % 2 else "terminals"][end] = True
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return arrays


def write_minari(root: str, dataset_id: str, episode_lengths: list[int], obs_dim: int = 11, act_dim: int = 3,
                 seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Minari layout: <root>/<id>/data/main_data.hdf5 (episode_<i> groups) and metadata.json."""
    import h5py

    rng = np.random.default_rng(seed)
    data_dir = os.path.join(root, dataset_id, "data")
    os.makedirs(data_dir, exist_ok=True)
    episodes = []
    with h5py.File(os.path.join(data_dir, "main_data.hdf5"), "w") as f:
        for i, length in enumerate(episode_lengths):
            ep = {"observations": rng.normal(size=(length + 1, obs_dim)),
                  "actions": rng.uniform(-1, 1, size=(length, act_dim)).astype(np.float32),
                  "rewards": rng.normal(size=length), "terminations": np.arange(length) == length - 1,
                  "truncations": np.zeros(length, bool)}
            group = f.create_group(f"episode_{i}")
            group.attrs["id"] = i
            group.attrs["total_steps"] = length
            for key, value in ep.items():
                group.create_dataset(key, data=value)
            episodes.append(ep)
    metadata = {"dataset_id": dataset_id, "total_episodes": len(episode_lengths),
                "total_steps": int(sum(episode_lengths)), "minari_version": "0.5.1"}
    with open(os.path.join(data_dir, "metadata.json"), "w") as f:
        json.dump(metadata, f)
    return episodes


def carla_targets(rng: np.random.Generator, frames: int) -> np.ndarray:
    """(frames, 28) float32 in the CARLA column layout: steer (col 0) in [-1, 1], speed (col 10) km/h."""
    targets = rng.normal(size=(frames, 28)).astype(np.float32)
    targets[:, 0] = rng.uniform(-1, 1, frames)
    targets[:, 10] = rng.uniform(0, 40, frames)
    return targets


def write_carla_h5(folder: str, num_files: int, frames_per_file: int = 6, seed: int = 0,
                   height: int = 88, width: int = 200) -> list[str]:
    """data_XXXXX.h5 files with rgb (frames, 88, 200, 3) uint8 and targets (frames, 28) float32."""
    import h5py

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(num_files):
        path = os.path.join(folder, f"data_{i + 3663:05d}.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("rgb", data=rng.integers(0, 256, (frames_per_file, height, width, 3), dtype=np.uint8))
            f.create_dataset("targets", data=carla_targets(rng, frames_per_file))
        paths.append(path)
    return paths


def write_carla_npy(folder: str, frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    images = rng.integers(0, 256, (frames, 88, 200, 3), dtype=np.uint8)
    targets = carla_targets(rng, frames)
    np.save(os.path.join(folder, "images.npy"), images)
    np.save(os.path.join(folder, "targets.npy"), targets)
    return images, targets


UTKFACE_MALFORMED = ("39_1_20170116174525125.jpg.chip.jpg", "61_1_20170109142408075.jpg.chip.jpg",
                     "notes.jpg")


def write_utkface(folder: str, ages: list[int], seed: int = 0, side: int = 20, chip: bool = True) -> list[str]:
    """JPEGs named age_gender_race_date.jpg.chip.jpg (or .jpg) plus the release's malformed names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    names = []
    for i, age in enumerate(ages):
        name = f"{age}_{i % 2}_{i % 5}_2017011617452{i:04d}.jpg" + (".chip.jpg" if chip else "")
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(os.path.join(folder, name))
        names.append(name)
    for name in UTKFACE_MALFORMED:
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(os.path.join(folder, name), format="JPEG")
    return names


SGEMM_HEADER = ("MWG,NWG,KWG,MDIMC,NDIMC,MDIMA,NDIMB,KWI,VWM,VWN,STRM,STRN,SA,SB,"
                "Run1 (ms),Run2 (ms),Run3 (ms),Run4 (ms)")


def write_sgemm_csv(path: str, rows: int, seed: int = 0) -> np.ndarray:
    """sgemm_product.csv: the release's header, 14 integer parameters, 4 run times in ms."""
    rng = np.random.default_rng(seed)
    params = np.stack([rng.choice([16, 32, 64, 128], rows) for _ in range(3)]
                      + [rng.choice([8, 16, 32], rows) for _ in range(4)]
                      + [rng.choice([2, 8], rows)] + [rng.choice([1, 2, 4, 8], rows) for _ in range(2)]
                      + [rng.integers(0, 2, rows) for _ in range(4)], axis=1)
    runs = np.round(rng.lognormal(4.0, 1.0, (rows, 1)) * rng.uniform(0.98, 1.02, (rows, 4)), 2)
    table = np.concatenate([params, runs], axis=1)
    with open(path, "w") as f:
        f.write(SGEMM_HEADER + "\n")
        for row in table:
            f.write(",".join([str(int(v)) for v in row[:14]] + [f"{v:.2f}" for v in row[14:]]) + "\n")
    return table


def write_npz(path: str, m: int = 40, m_test: int = 10, p: int = 5, n: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.normal(size=(m, p)), "y_train": rng.normal(size=(m, n)),
              "x_test": rng.normal(size=(m_test, p)), "y_test": rng.normal(size=(m_test, n))}
    np.savez(path, **arrays)
    return arrays
