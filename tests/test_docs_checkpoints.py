"""docs/checkpoints.md stays true: its plain-Orbax snippet restores a member of a real run and
reproduces the test MSE logged for it, and the leaf shapes it lists have the sweep axis."""
import json
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "checkpoints.md").read_text()


def snippet(name: str) -> str:
    """The ```python block after `<!-- snippet: name -->` in docs/checkpoints.md."""
    match = re.search(rf"<!-- snippet: {name} -->\s*```python\n(.*?)```", DOC, re.S)
    assert match, f"no snippet {name!r} in docs/checkpoints.md"
    return match.group(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-member weight-decay sweep of a small MLP on a small npz data set."""
    from nrc_jax.engine import train
    from nrc_jax.io.config_files import sibling

    tmp = tmp_path_factory.mktemp("ckpt_doc")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 5)).astype(np.float32)
    y = np.stack([np.tanh(x[:, 0]), x[:, 1] - x[:, 2]], 1).astype(np.float32)
    np.savez(tmp / "d.npz", x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    config = sibling(str(ROOT / "configs" / "mlp.py"), "mlp").get_config()
    config.data.name, config.data.path = "npz", str(tmp / "d.npz")
    config.model.widths = (32, 32)
    config.train.update(epochs=6, eval_every=3, checkpoint_every=6, batch_size=16, progress_bar=False)
    config.sweep.weight_decay = (1e-2, 0.0)
    config.mesh.num_devices = 1
    train.train_and_evaluate(config, str(tmp / "run"))
    return tmp / "run"


def test_the_restore_snippet_reproduces_the_logged_test_mse(run, capsys):
    code = snippet("restore-member")
    body = [line for line in code.splitlines() if line.strip() and not line.startswith(("import ", "from "))]
    assert len(body) <= 13, "the doc promises a short snippet"
    code = code.replace('"runs/swimmer_wd"', repr(str(run)))
    namespace: dict = {}
    exec(compile(code, "docs/checkpoints.md", "exec"), namespace)  # noqa: S102 - the doc's own code
    np.testing.assert_allclose(namespace["test_mse"], namespace["logged"]["test_mse"], rtol=1e-5)
    assert namespace["features"].shape == (20, 32)
    assert len(capsys.readouterr().out.split()) == 2


def test_the_documented_layout_matches_a_checkpoint(run):
    import jax
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(str(run / "checkpoints")) as manager:
        assert manager.all_steps() == [6]
        items = ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
        saved = manager.restore(6, args=items)
    shapes = jax.tree.map(lambda a: a.shape, saved["state"])
    assert shapes["epoch"] == (2,) and shapes["rng"] == (2, 2)
    assert shapes["params"]["dense_0"]["kernel"] == (2, 5, 32)
    assert shapes["params"]["head"] == {"kernel": (2, 32, 2), "bias": (2, 2)}
    assert shapes["pca_basis"] == (2, 32, 5)
    assert set(shapes["hparams"]) == {"lr", "weight_decay", "lambda_h", "lambda_w"}
    assert set(saved["meta"]) == {"config", "fingerprint", "data_name", "input_shape", "out_dim", "members", "epoch"}
    for key in saved["meta"]:
        assert f"`{key}`" in DOC
    assert json.loads(json.dumps(saved["meta"]["members"]))[1]["sweep"] == {"weight_decay": 0.0}
