"""A competently written PyTorch loop: the second reference of the benchmarks (issue 19).

What a user who knows PyTorch would write for the same study, beside the published-style loop of
`torch_reference.py` (same model, optimizer, loss and evaluation work; only the engineering differs):
- the whole data set lives in tensors; each epoch shuffles with `torch.randperm` and slices index
  batches of 256 (the last, partial batch kept, as the DataLoader does);
- the same MLP (3 x 256 ReLU + linear head with bias, `torch_reference.MLP`), SGD lr 1e-2; the
  decay `0.5 * wd * sum ||theta||^2` over all parameters is SGD's own `weight_decay=wd` (the same
  gradient, wd * theta, without a Python sum over parameters in every step);
- an evaluation with exact metrics, all in torch: one forward pass over the train and test sets,
  NRC1 from `torch.linalg.eigh` of the feature covariance (what sklearn's PCA computes), NRC2 from a
  QR basis of W's rows, NRC3 on the whole gamma grid at once, train and test MSE.

Rows are samples: inputs `x` (M, d_in), targets `y` (M, n), features `H` (M, 256), head `W` (n, 256).

    python benchmarks/torch_competent.py --npz DATA.npz --epochs 100 [--eval-every 10]
"""
from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference  # noqa: E402  (the same MLP, sizes and target statistics)

BATCH_SIZE = torch_reference.BATCH_SIZE
LEARNING_RATE = torch_reference.LEARNING_RATE
GAMMA_GRID_SIZE = torch_reference.GAMMA_GRID_SIZE


def _residual_outside(h_unit: torch.Tensor, basis: torch.Tensor) -> float:
    """mean_i ||h_i - P h_i||^2 for unit rows h_i (M, d) and an orthonormal basis (k, d) of P."""
    coefficients = h_unit @ basis.T
    return float((1.0 - (coefficients ** 2).sum(dim=1)).mean())


def nrc_from_features(features: torch.Tensor, weights: torch.Tensor, sigma_sqrt: torch.Tensor,
                      lambda_min: float, num_gammas: int = GAMMA_GRID_SIZE) -> dict[str, float]:
    """NRC1 (eigh of the covariance), NRC2 (QR of W^T) and the best NRC3 on the gamma grid.

    features (M, d), weights (n, d), sigma_sqrt (n, n): the published definitions (per-sample
    normalized features projected on the top-n principal directions of the centered features, and
    on W's row space; gamma in [0, lambda_min) on a grid of `num_gammas`), computed in one pass each.
    """
    n = weights.shape[0]
    h_unit = features / torch.linalg.norm(features, dim=1, keepdim=True)
    centered = features - features.mean(dim=0, keepdim=True)
    _, vectors = torch.linalg.eigh(centered.T @ centered / features.shape[0])  # ascending eigenvalues
    nrc1 = _residual_outside(h_unit, vectors[:, -n:].T)
    q, _ = torch.linalg.qr(weights.T)  # (d, n): W has full row rank after any training
    nrc2 = _residual_outside(h_unit, q.T)
    wwt = weights @ weights.T
    wwt = wwt / torch.linalg.norm(wwt)
    gammas = torch.linspace(0.0, lambda_min, num_gammas + 1, dtype=torch.float64)[:-1]  # endpoint excluded
    a_gamma = sigma_sqrt[None] - gammas.sqrt().to(sigma_sqrt.dtype)[:, None, None] * torch.eye(n)[None]
    a_gamma = a_gamma / torch.linalg.norm(a_gamma, dim=(1, 2), keepdim=True)
    values = ((wwt[None] - a_gamma) ** 2).sum(dim=(1, 2))
    best = int(torch.argmin(values))
    return {"nrc1": nrc1, "nrc2": nrc2, "nrc3": float(values[best]), "nrc3_gamma": float(gammas[best])}


@dataclasses.dataclass
class CompetentRun:
    """One run: model, optimizer, the data set as tensors and the target statistics."""
    model: torch_reference.MLP
    optimizer: torch.optim.Optimizer
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    sigma_sqrt: torch.Tensor
    lambda_min: float

    def train_epoch(self) -> float:
        """One shuffled pass in index batches; returns the last minibatch's 0.5 * MSE."""
        self.model.train()
        order = torch.randperm(len(self.x_train))
        loss = torch.zeros(())
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start:start + BATCH_SIZE]
            self.optimizer.zero_grad(set_to_none=True)
            prediction, _ = self.model(self.x_train[rows])
            loss = 0.5 * ((prediction - self.y_train[rows]) ** 2).sum(dim=1).mean()
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Train/test MSE and NRC1-3 over the whole train set (exact metrics, as in nrc_jax)."""
        self.model.eval()
        prediction, features = self.model(self.x_train)
        test_prediction, _ = self.model(self.x_test)
        result = nrc_from_features(features, self.model.head.weight, self.sigma_sqrt, self.lambda_min)
        result["train_mse"] = float(((prediction - self.y_train) ** 2).sum(dim=1).mean())
        result["test_mse"] = float(((test_prediction - self.y_test) ** 2).sum(dim=1).mean())
        return result

    def run(self, epochs: int, eval_every: int) -> list[dict[str, float]]:
        """Trains `epochs` epochs, evaluating after every `eval_every`-th one."""
        history = []
        for epoch in range(1, epochs + 1):
            self.train_epoch()
            if eval_every and epoch % eval_every == 0:
                history.append({"epoch": epoch, **self.evaluate()})
        return history


def make_run(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             weight_decay: float = 1e-2, seed: int = 0) -> CompetentRun:
    """The competent run on the given float32 arrays (rows are samples), same initialization as
    `torch_reference.make_run` for the same seed."""
    torch.manual_seed(seed)
    model = torch_reference.MLP(x_train.shape[1], y_train.shape[1])
    sigma_sqrt, lambda_min = torch_reference.target_sigma_sqrt(y_train)
    tensors = [torch.as_tensor(np.ascontiguousarray(a, np.float32)) for a in (x_train, y_train, x_test, y_test)]
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, weight_decay=weight_decay)
    return CompetentRun(model, optimizer, *tensors, sigma_sqrt=sigma_sqrt, lambda_min=lambda_min)


def main(argv: list[str] | None = None) -> None:
    """`python benchmarks/torch_competent.py --npz FILE --epochs E [--eval-every 10]`: one run on a .npz
    with x_train, y_train, x_test, y_test (what bench.py times as a whole process)."""
    torch_reference.npz_main(make_run, argv, main.__doc__)


if __name__ == "__main__":
    main()
