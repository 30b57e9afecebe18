"""One process of the loopback multi-process tests (run by tests/test_distributed.py).

    python tests/multihost_worker.py OUT_DIR [RESTORE_DIR]

Joins the other processes through the NRC_JAX_* variables, then:
  1. builds the global data of `make_data()` from this process's rows only and writes its
     jit-reduced `nrc_jax.core.metrics.feature_stats` (and metrics) to OUT_DIR/stats_<process>.npz;
  2. if RESTORE_DIR is given, restores the checkpoint saved there (by another topology) onto this
     topology's mesh and writes it to OUT_DIR/restored_<process>.npz;
  3. saves `make_tree()` sharded over all processes' devices to OUT_DIR/ckpt (all processes save).
The test process calls the same functions with one process, so both sides share one code path.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multihost_helpers as helpers  # noqa: E402  (beside this file)
from nrc_jax.errors import UserError  # noqa: E402
from nrc_jax.io import distributed  # noqa: E402

NUM_ROWS = 10  # does not divide over 4 devices: exercises the padding and the mask
FEATURES = 3
TARGETS = 2
CHECKPOINT_STEP = 7


def make_data() -> tuple[np.ndarray, np.ndarray]:
    """The global data set every topology must agree on: features (M, d), targets (M, n)."""
    rng = np.random.default_rng(0)
    return (rng.normal(size=(NUM_ROWS, FEATURES)).astype(np.float32),
            rng.normal(size=(NUM_ROWS, TARGETS)).astype(np.float32))


def make_tree() -> dict[str, np.ndarray]:
    """A checkpoint-like pytree: a row-sharded array (8, 3) and a replicated head (n, d)."""
    return {"rows": np.arange(24, dtype=np.float32).reshape(8, 3) / 7.0,
            "head": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5}


def data_mesh(devices=None):
    import jax
    from jax.sharding import Mesh

    devices = jax.devices() if devices is None else devices
    return Mesh(np.array(devices), (distributed.DATA_AXIS,))


HEAD = np.array([[0.5, -1.0, 0.25], [2.0, 0.0, -0.5]], np.float32)  # W (n, d) making predictions


def masked_stats(h, y, mask) -> dict:
    from nrc_jax.core import metrics

    return metrics.feature_stats(h, y, h @ HEAD.T, mask)._asdict()


def global_stats(mesh) -> dict[str, np.ndarray]:
    """nrc_jax.core.metrics.feature_stats of make_data(), each process contributing its rows only.

    Predictions are features @ HEAD.T; padded rows are masked out. Returns the FeatureStats fields,
    reduced inside one jit over every device (every metric is a function of them).
    """
    import jax

    features, targets = make_data()
    shard = helpers.process_rows(NUM_ROWS, num_devices=mesh.size)
    h, mask = helpers.pad_rows(features[shard.start:shard.stop], shard.size)
    y, _ = helpers.pad_rows(targets[shard.start:shard.stop], shard.size)
    h, y, mask = helpers.shard_host_array(mesh, (h, y, mask))

    compiled = distributed.compile_together("stats", jax.jit(masked_stats), h, y, mask)
    return {k: np.asarray(jax.device_get(v)) for k, v in compiled(h, y, mask).items()}


def save_tree(directory: str, mesh) -> None:
    import jax
    import orbax.checkpoint as ocp
    from jax.sharding import NamedSharding, PartitionSpec

    tree = make_tree()
    shard = helpers.process_rows(tree["rows"].shape[0], num_devices=mesh.size)
    state = {"rows": helpers.shard_host_array(mesh, tree["rows"][shard.start:shard.stop]),
             "head": jax.device_put(tree["head"], NamedSharding(mesh, PartitionSpec()))}
    with ocp.CheckpointManager(directory) as manager:
        manager.save(CHECKPOINT_STEP, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()


def restore_tree(directory: str, mesh) -> dict[str, np.ndarray]:
    """Restores onto `mesh` (rows sharded over 'data', head replicated); returns host copies."""
    import jax
    import orbax.checkpoint as ocp
    from jax.sharding import NamedSharding, PartitionSpec
    from jax.experimental import multihost_utils

    target = {"rows": NamedSharding(mesh, PartitionSpec(distributed.DATA_AXIS)),
              "head": NamedSharding(mesh, PartitionSpec())}
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            make_tree(), target)
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    shardings_ok = all(restored[k].sharding == target[k] for k in target)
    host = multihost_utils.process_allgather(restored, tiled=True)
    return {"step": np.asarray(step), "shardings_ok": np.asarray(shardings_ok),
            **{k: np.asarray(v) for k, v in host.items()}}


def main(out_dir: str, restore_dir: str | None) -> None:
    distributed.maybe_initialize()
    import jax

    mesh = data_mesh()
    index = jax.process_index()
    np.savez(os.path.join(out_dir, f"stats_{index}.npz"), process_count=jax.process_count(),
             device_count=jax.device_count(), **global_stats(mesh))
    if restore_dir:
        np.savez(os.path.join(out_dir, f"restored_{index}.npz"), **restore_tree(restore_dir, mesh))
    save_tree(os.path.join(out_dir, "ckpt"), mesh)


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    except UserError as e:  # as the CLIs do: the message only, exit status 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
