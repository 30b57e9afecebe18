"""PyTorch reference loop, written the way the paper's published MuJoCo code is (the baseline of issue 7).

Deliberately *not* optimized: it reproduces the cost structure of the published loop so that
`benchmarks/bench.py` can measure nrc_jax against it on the same machine.
- a map-style `Dataset` that converts each sample to tensors in `__getitem__`;
- `DataLoader(batch_size=256, shuffle=True)`;
- MLP with 3 hidden layers of 256 + ReLU and a linear head with bias;
- SGD lr 1e-2 on `0.5 * MSE + 0.5 * wd * sum ||theta||^2` over all parameters (biases included);
- NRC evaluation that gathers up to 100 batches of features through the DataLoader, fits sklearn
  PCA for NRC1 (projecting the per-sample normalized features), a hand-written Gram-Schmidt for
  NRC2, and a Python loop over the gamma grid for NRC3.

Rows are samples: inputs `x` (M, d_in), targets `y` (M, n), features `H` (M, 256), head `W` (n, 256).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any, Callable

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn
from torch.utils.data import DataLoader, Dataset

BATCH_SIZE = 256
HIDDEN = 256
DEPTH = 3
LEARNING_RATE = 1e-2
MAX_EVAL_BATCHES = 100
GAMMA_GRID_SIZE = 1000


class RegressionDataset(Dataset):
    """Map-style data set over numpy arrays; each sample becomes tensors on access (as published)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.x[index], dtype=torch.float32),
                torch.tensor(self.y[index], dtype=torch.float32))


class MLP(nn.Module):
    """3 x 256 ReLU body and a linear head with bias; `forward` returns (prediction, features)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = HIDDEN, depth: int = DEPTH):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


def regularized_loss(model: nn.Module, prediction: torch.Tensor, target: torch.Tensor,
                     weight_decay: float) -> torch.Tensor:
    """0.5 * mean_i ||yhat_i - y_i||^2 + 0.5 * wd * sum over all parameters of ||theta||^2."""
    mse = ((prediction - target) ** 2).sum(dim=1).mean()
    l2 = sum((p ** 2).sum() for p in model.parameters())
    return 0.5 * mse + 0.5 * weight_decay * l2


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                weight_decay: float) -> float:
    """One pass over `loader`; returns the last minibatch loss."""
    model.train()
    loss = torch.zeros(())
    for x, y in loader:
        optimizer.zero_grad()
        prediction, _ = model(x)
        loss = regularized_loss(model, prediction, y, weight_decay)
        loss.backward()
        optimizer.step()
    return float(loss.item())


def gram_schmidt(rows: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (k, d) of the span of `rows` (n, d), by the classical loop."""
    basis: list[torch.Tensor] = []
    tolerance = 1e-5 * float(torch.linalg.norm(rows, dim=1).max())
    for v in rows:
        w = v.clone()
        for u in basis:
            w = w - torch.dot(w, u) * u
        norm = torch.linalg.norm(w)
        if norm > tolerance:  # otherwise v is (numerically) in the span already
            basis.append(w / norm)
    return torch.stack(basis) if basis else torch.zeros((0, rows.shape[1]), dtype=rows.dtype)


def target_sigma_sqrt(y: np.ndarray) -> tuple[torch.Tensor, float]:
    """PSD square root of the target covariance (n, n) and its smallest eigenvalue lambda_min."""
    sigma = torch.tensor(np.cov(y, rowvar=False, bias=True), dtype=torch.float32).reshape(y.shape[1], -1)
    values, vectors = torch.linalg.eigh(sigma)
    sqrt = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    return sqrt, float(values.min())


def nrc_from_features(features: np.ndarray, weights: np.ndarray, sigma_sqrt: torch.Tensor,
                      lambda_min: float, num_gammas: int = GAMMA_GRID_SIZE) -> dict[str, float]:
    """NRC1 (sklearn PCA), NRC2 (Gram-Schmidt) and the best NRC3 on the gamma grid, as published.

    features (M, d) float32, weights (n, d); NRC1/NRC2 project the per-sample normalized features.
    """
    n = weights.shape[0]
    h = torch.as_tensor(features)
    h_normalized = h / torch.linalg.norm(h, dim=1, keepdim=True)

    pca = PCA(n_components=n)
    pca.fit(features)
    components = torch.as_tensor(pca.components_, dtype=h.dtype)
    projected = h_normalized @ components.T @ components
    nrc1 = float(((h_normalized - projected) ** 2).sum(dim=1).mean())

    basis = gram_schmidt(torch.as_tensor(weights, dtype=h.dtype))
    projected = h_normalized @ basis.T @ basis
    nrc2 = float(((h_normalized - projected) ** 2).sum(dim=1).mean())

    w = torch.as_tensor(weights, dtype=torch.float32)
    wwt = w @ w.T
    wwt = wwt / torch.linalg.norm(wwt)
    best_value, best_gamma = float("inf"), 0.0
    for gamma in np.linspace(0.0, lambda_min, num_gammas, endpoint=False):
        a_gamma = sigma_sqrt - float(np.sqrt(gamma)) * torch.eye(n)
        a_gamma = a_gamma / torch.linalg.norm(a_gamma)
        value = float(torch.linalg.norm(wwt - a_gamma) ** 2)
        if value < best_value:
            best_value, best_gamma = value, float(gamma)
    return {"nrc1": nrc1, "nrc2": nrc2, "nrc3": best_value, "nrc3_gamma": best_gamma}


@torch.no_grad()
def gather(model: nn.Module, loader: DataLoader, max_batches: int | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (M, d), predictions (M, n) and targets (M, n) of up to `max_batches` batches."""
    model.eval()
    features, predictions, targets = [], [], []
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        prediction, h = model(x)
        features.append(h)
        predictions.append(prediction)
        targets.append(y)
    return tuple(torch.cat(t).numpy() for t in (features, predictions, targets))


def evaluate(model: MLP, train_loader: DataLoader, test_loader: DataLoader,
             sigma_sqrt: torch.Tensor, lambda_min: float) -> dict[str, float]:
    """Train/test MSE and NRC1-3 on up to 100 gathered training batches (the published evaluation)."""
    h, prediction, y = gather(model, train_loader, MAX_EVAL_BATCHES)
    _, test_prediction, test_y = gather(model, test_loader)
    weights = model.head.weight.detach().numpy()
    result = nrc_from_features(h, weights, sigma_sqrt, lambda_min)
    result["train_mse"] = float(np.mean(np.sum((prediction - y) ** 2, axis=1)))
    result["test_mse"] = float(np.mean(np.sum((test_prediction - test_y) ** 2, axis=1)))
    return result


def random_regression_data(train_size: int, in_dim: int, out_dim: int, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random float32 (x_train, y_train, x_test, y_test) of MuJoCo-like shapes; test = 20% of train."""
    rng = np.random.default_rng(seed)
    test_size = max(1, train_size // 5)
    x = rng.standard_normal((train_size + test_size, in_dim)).astype(np.float32)
    mixing = rng.standard_normal((in_dim, out_dim)) / np.sqrt(in_dim)
    y = (np.tanh(x @ mixing) + 0.1 * rng.standard_normal((len(x), out_dim))).astype(np.float32)
    return x[:train_size], y[:train_size], x[train_size:], y[train_size:]


@dataclasses.dataclass
class ReferenceRun:
    """Everything one published-style run holds: model, optimizer, loaders, target statistics."""
    model: MLP
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    test_loader: DataLoader
    weight_decay: float
    sigma_sqrt: torch.Tensor
    lambda_min: float

    def train_epoch(self) -> float:
        return train_epoch(self.model, self.train_loader, self.optimizer, self.weight_decay)

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.train_loader, self.test_loader, self.sigma_sqrt, self.lambda_min)

    def run(self, epochs: int, eval_every: int) -> list[dict[str, float]]:
        """Trains `epochs` epochs, evaluating after every `eval_every`-th one."""
        history = []
        for epoch in range(1, epochs + 1):
            self.train_epoch()
            if eval_every and epoch % eval_every == 0:
                history.append({"epoch": epoch, **self.evaluate()})
        return history


def make_run(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             weight_decay: float = 1e-2, seed: int = 0) -> ReferenceRun:
    """Builds the published-style run on the given arrays (rows are samples)."""
    torch.manual_seed(seed)
    model = MLP(x_train.shape[1], y_train.shape[1])
    sigma_sqrt, lambda_min = target_sigma_sqrt(y_train)
    return ReferenceRun(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=LEARNING_RATE),
        train_loader=DataLoader(RegressionDataset(x_train, y_train), batch_size=BATCH_SIZE, shuffle=True),
        test_loader=DataLoader(RegressionDataset(x_test, y_test), batch_size=BATCH_SIZE, shuffle=False),
        weight_decay=weight_decay, sigma_sqrt=sigma_sqrt, lambda_min=lambda_min)


def npz_main(make: Callable[..., Any], argv: list[str] | None, description: str) -> None:
    """One run built by `make(x_train, y_train, x_test, y_test, weight_decay=, seed=)` on a .npz with
    those arrays, timed as a whole (what bench.py times as a process); prints one JSON line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--npz", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with np.load(args.npz) as f:
        arrays = [f[k].astype(np.float32) for k in ("x_train", "y_train", "x_test", "y_test")]
    run = make(*arrays, weight_decay=args.weight_decay, seed=args.seed)
    start = time.perf_counter()
    history = run.run(args.epochs, args.eval_every)
    final = history[-1] if history else run.evaluate()
    print(json.dumps({"epochs": args.epochs, "seconds": time.perf_counter() - start, "final": final}))


def main(argv: list[str] | None = None) -> None:
    """`python benchmarks/torch_reference.py --npz FILE --epochs E [--eval-every 10]`: one published-style
    run on a .npz with x_train, y_train, x_test, y_test (what bench.py times as a whole process)."""
    npz_main(make_run, argv, main.__doc__)


if __name__ == "__main__":
    main()
