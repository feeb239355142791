"""A two-layer neural network in plain NumPy with hand-written backpropagation and SGD
(CURRICULUM: the introductory guide's "network from scratch").

Architecture (one example is a row; a batch X has shape (N, D)):

    Z1 = X @ W1 + b1        (N, H)   pre-activation of the hidden layer
    A1 = f(Z1)              (N, H)   hidden activation, f = sigmoid by default
    Z2 = A1 @ W2 + b2       (N, K)   output scores (logits)
    P  = g(Z2)              (N, K)   output: softmax (default) or sigmoid

Output layer and loss. For classification the default is softmax + cross-entropy,

    L = -(1/N) * sum_n log P[n, y_n],

because (a) it is the maximum-likelihood loss for a categorical label and (b) its gradient with
respect to the logits is simply dL/dZ2 = (P - Y) / N (Y one-hot): the softmax Jacobian and the
log cancel, so the gradient never vanishes when the network is confidently wrong. The
guide's older variant, a sigmoid output with mean squared error on one-hot targets,

    L = (1/N) * sum_n 1/2 * ||sigmoid(Z2[n]) - Y[n]||^2,

is available with `output="sigmoid"`; its gradient dL/dZ2 = (P - Y) * P * (1 - P) / N carries the
extra factor P (1 - P), which is close to 0 for saturated wrong outputs, so it learns slower.

Backward pass (chain rule, one layer at a time, from the loss down):

    dZ2 = dL/dZ2                              (N, K)   see above
    dW2 = A1.T @ dZ2                          (H, K)   because Z2 = A1 @ W2 + b2
    db2 = dZ2.sum(axis=0)                     (K,)     b2 is broadcast over the batch
    dA1 = dZ2 @ W2.T                          (N, H)
    dZ1 = dA1 * f'(Z1)                        (N, H)   elementwise; sigmoid: f' = A1 * (1 - A1)
    dW1 = X.T @ dZ1                           (D, H)
    db1 = dZ1.sum(axis=0)                     (H,)

SGD then moves every parameter against its gradient: W <- W - lr * dW.

The gradients are checked against PyTorch autograd and against finite differences in
tests/test_scratch.py. Everything is float64 by default so those checks can be tight.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("sigmoid", "tanh", "relu")
OUTPUTS = ("softmax", "sigmoid")


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), computed without overflow for large |z|."""
    e = np.exp(-np.abs(z))  # in (0, 1]: never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax; subtracting the row maximum changes nothing mathematically but avoids overflow."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _act(name: str, z: np.ndarray) -> np.ndarray:
    if name == "sigmoid":
        return sigmoid(z)
    if name == "tanh":
        return np.tanh(z)
    return np.maximum(z, 0.0)


def _act_grad(name: str, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """f'(z), written with the already computed a = f(z) where that is cheaper."""
    if name == "sigmoid":
        return a * (1.0 - a)
    if name == "tanh":
        return 1.0 - a * a
    return (z > 0).astype(z.dtype)


class TwoLayerNet:
    """Input -> hidden layer (sigmoid by default) -> output layer, trained with mini-batch SGD.

    Args:
        n_in: input features D.
        n_hidden: hidden units H.
        n_out: classes K.
        activation: hidden activation: 'sigmoid', 'tanh' or 'relu'.
        output: 'softmax' (cross-entropy loss, the default) or 'sigmoid' (mean squared error on
            one-hot targets, the guide's older variant).
        seed: seeds the initial weights and the shuffling in `fit`.
        dtype: float64 by default (gradient checks need it); float32 also works.

    Weights are drawn from Glorot/Xavier uniform U(-r, r) with r = sqrt(6 / (fan_in + fan_out)),
    which keeps the variance of activations roughly constant across layers for sigmoid/tanh;
    biases start at zero.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(200, 2)); y = (x[:, 0] * x[:, 1] > 0).astype(int)  # XOR-like
        >>> net = TwoLayerNet(2, 16, 2, seed=0)
        >>> net.forward(x).shape                     # class probabilities, rows sum to 1
        (200, 2)
        >>> loss, grads = net.loss_and_grads(x, y)
        >>> sorted(grads), grads["W1"].shape
        (['W1', 'W2', 'b1', 'b2'], (2, 16))
        >>> history = net.fit(x, y, epochs=300, lr=1.0, batch_size=20)
        >>> history[-1] < history[0], bool(net.accuracy(x, y) > 0.9)
        (True, True)
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int, activation: str = "sigmoid",
                 output: str = "softmax", seed: int = 0, dtype=np.float64):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation = {activation!r}: expected one of {', '.join(ACTIVATIONS)}.")
        if output not in OUTPUTS:
            raise ValueError(f"output = {output!r}: expected one of {', '.join(OUTPUTS)}.")
        self.activation, self.output, self.dtype = activation, output, np.dtype(dtype)
        self.n_out = n_out
        self.rng = np.random.default_rng(seed)

        def glorot(fan_in, fan_out):
            r = np.sqrt(6.0 / (fan_in + fan_out))
            return self.rng.uniform(-r, r, size=(fan_in, fan_out)).astype(self.dtype)

        self.params = {
            "W1": glorot(n_in, n_hidden),                 # (D, H)
            "b1": np.zeros(n_hidden, dtype=self.dtype),   # (H,)
            "W2": glorot(n_hidden, n_out),                # (H, K)
            "b2": np.zeros(n_out, dtype=self.dtype),      # (K,)
        }

    # --- forward ---------------------------------------------------------------------------
    def _forward(self, x: np.ndarray):
        p = self.params
        z1 = x @ p["W1"] + p["b1"]          # (N, H)
        a1 = _act(self.activation, z1)      # (N, H)
        z2 = a1 @ p["W2"] + p["b2"]         # (N, K)
        out = softmax(z2) if self.output == "softmax" else sigmoid(z2)  # (N, K)
        return out, (z1, a1, z2)

    def forward(self, x) -> np.ndarray:
        """Output probabilities (softmax rows sum to 1; sigmoid outputs each lie in (0, 1)), shape (N, K)."""
        return self._forward(self._x(x))[0]

    def predict(self, x) -> np.ndarray:
        """Predicted class index per row, shape (N,)."""
        return self.forward(x).argmax(axis=1)

    def accuracy(self, x, y) -> float:
        """Fraction of rows whose predicted class equals the label."""
        return float((self.predict(x) == np.asarray(y)).mean())

    # --- loss and backward ---------------------------------------------------------------
    def loss_and_grads(self, x, y) -> tuple[float, dict[str, np.ndarray]]:
        """Mean loss over the batch and its gradient for every parameter (same keys and shapes
        as `self.params`).

        Args:
            x: inputs (N, D).
            y: integer class labels (N,).
        """
        x, y = self._x(x), np.asarray(y)
        n = x.shape[0]
        p = self.params
        out, (z1, a1, z2) = self._forward(x)
        onehot = np.zeros_like(out)            # (N, K)
        onehot[np.arange(n), y] = 1.0
        if self.output == "softmax":
            # log P[n, y_n] from the logits directly (log-sum-exp) so that log(0) never happens
            zmax = z2.max(axis=1, keepdims=True)
            logp = z2 - zmax - np.log(np.exp(z2 - zmax).sum(axis=1, keepdims=True))  # (N, K)
            loss = -logp[np.arange(n), y].mean()
            dz2 = (out - onehot) / n            # (N, K): softmax + cross-entropy combined
        else:
            diff = out - onehot                 # (N, K)
            loss = 0.5 * (diff * diff).sum(axis=1).mean()
            dz2 = diff * out * (1.0 - out) / n  # (N, K): dL/dP times sigmoid'(Z2) = P (1 - P)
        grads = {
            "W2": a1.T @ dz2,                   # (H, K)
            "b2": dz2.sum(axis=0),              # (K,)
        }
        da1 = dz2 @ p["W2"].T                   # (N, H): back through Z2 = A1 @ W2 + b2
        dz1 = da1 * _act_grad(self.activation, z1, a1)  # (N, H): back through A1 = f(Z1)
        grads["W1"] = x.T @ dz1                 # (D, H)
        grads["b1"] = dz1.sum(axis=0)           # (H,)
        return float(loss), grads

    # --- training -------------------------------------------------------------------------
    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """One plain SGD update, in place: param <- param - lr * grad."""
        for k, g in grads.items():
            self.params[k] -= lr * g

    def fit(self, x, y, epochs: int = 10, lr: float = 0.5, batch_size: int = 32) -> list[float]:
        """Mini-batch SGD: each epoch shuffles the rows, then steps once per batch.

        Returns:
            The mean training loss of each epoch (averaged over its batches, weighted by size).
        """
        x, y = self._x(x), np.asarray(y)
        n = x.shape[0]
        history = []
        for _ in range(epochs):
            order = self.rng.permutation(n)
            total = 0.0
            for i in range(0, n, batch_size):
                j = order[i:i + batch_size]
                loss, grads = self.loss_and_grads(x[j], y[j])
                self.step(grads, lr)
                total += loss * len(j)
            history.append(total / n)
        return history

    def _x(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        return x.reshape(len(x), -1)  # images (N, 8, 8) become rows (N, 64)


def digits_demo(n_hidden: int = 32, epochs: int = 40, lr: float = 0.5, batch_size: int = 16,
                activation: str = "sigmoid", output: str = "softmax", seed: int = 0) -> dict:
    """Train `TwoLayerNet` on scikit-learn's 8x8 digits: pixels / 16 into [0, 1], a stratified
    50/50 train/test split fixed by `seed`. Returns sizes, final training loss, accuracies and seconds."""
    import time

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.data / 16.0  # (1797, 64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.5, stratify=d.target, random_state=seed)
    net = TwoLayerNet(x.shape[1], n_hidden, 10, activation=activation, output=output, seed=seed)
    t0 = time.perf_counter()
    history = net.fit(x_tr, y_tr, epochs=epochs, lr=lr, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return {"train_size": len(y_tr), "test_size": len(y_te), "epochs": epochs, "final_loss": history[-1],
            "train_acc": net.accuracy(x_tr, y_tr), "test_acc": net.accuracy(x_te, y_te), "seconds": seconds}
