"""The per-pair part of the split DLRM (:mod:`recsys_tasks.scoring.ranker`) on a CPU, fused in numba.

TensorFlow's version of the per-pair step materialises every candidate's item vectors
(``tf.gather``: 100 candidates x 4 features x 64 floats = 100 kB per user) and every pair's item terms
before its small batched matrix products read them back; on a CPU that memory traffic, not arithmetic,
was most of ranking's time. Here each thread takes a block of users and, for each of their candidates,
computes the ``|U| x |I|`` cross dot products straight from the per-item vectors of the chunk (nothing
per pair is gathered), then runs the first top-MLP layer and the rest of the MLP as single-threaded
BLAS products over the whole block (``np.dot`` in numba calls scipy's ``sgemm``), with the user and item
terms added in place. The result is the TensorFlow version's up to float rounding (summation order);
:func:`recsys_tasks.scoring.ranker.make_ranker` checks it against the whole model like the TensorFlow split.
A GPU keeps the TensorFlow version (one fused graph on the device).

Activations supported per layer: ``relu`` and ``linear`` (what Merlin's ``MLPBlock`` builds by default);
any other makes :func:`cpu_activation_codes` raise, and the TensorFlow version is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange
from numba.typed import List

USERS_PER_TASK = 32
"""Users per thread task: 3,200 pairs at K=100, so the MLP's products are large enough for sgemm."""

LINEAR, RELU = 0, 1


class UnsupportedActivation(ValueError):
    """A layer activation the numba kernel does not implement (the TensorFlow split is used instead)."""


def cpu_activation_codes(activations: list[Any]) -> np.ndarray:
    """The kernel's code for each Keras activation: ``linear`` -> 0, ``relu`` -> 1."""
    codes = []
    for activation in activations:
        name = getattr(activation, "__name__", str(activation))
        if name == "linear":
            codes.append(LINEAR)
        elif name == "relu":
            codes.append(RELU)
        else:
            raise UnsupportedActivation(f"activation {name!r} has no CPU kernel")
    return np.array(codes, dtype=np.int64)


@njit(cache=True, nogil=True)
def _activate(values: np.ndarray, code: int) -> None:
    if code == RELU:
        flat = values.reshape(-1)
        for j in range(flat.size):
            if flat[j] < 0:
                flat[j] = 0


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _score_block(user_vectors: np.ndarray, user_terms: np.ndarray, item_vectors: np.ndarray,
                 item_terms: np.ndarray, candidates: np.ndarray, first_cross: np.ndarray, first_code: int,
                 kernels: Any, biases: Any, codes: np.ndarray, first: int, last: int, out: np.ndarray) -> None:
    """Users ``first..last-1``: cross dot products, first layer plus the user and item terms, the MLP."""
    k = candidates.shape[1]
    nu, dim = user_vectors.shape[1], user_vectors.shape[2]
    ni = item_vectors.shape[1]
    rows = (last - first) * k
    cross = np.empty((rows, nu * ni), dtype=np.float32)
    for u in range(first, last):
        for c in range(k):
            item = candidates[u, c]
            row = (u - first) * k + c
            for a in range(nu):  # user feature major, as the first layer's cross rows are laid out
                for b in range(ni):
                    total = np.float32(0.0)
                    for d in range(dim):
                        total += user_vectors[u, a, d] * item_vectors[item, b, d]
                    cross[row, a * ni + b] = total
    hidden = np.dot(cross, first_cross)
    for u in range(first, last):
        for c in range(k):
            row = (u - first) * k + c
            item = candidates[u, c]
            for h in range(hidden.shape[1]):
                hidden[row, h] += user_terms[u, h] + item_terms[item, h]
    _activate(hidden, first_code)
    for layer in range(len(kernels)):
        hidden = np.dot(hidden, kernels[layer])
        bias = biases[layer]
        for row in range(rows):
            for h in range(hidden.shape[1]):
                hidden[row, h] += bias[h]
        _activate(hidden, codes[layer])
    for u in range(first, last):
        for c in range(k):
            out[u, c] = np.float32(1.0) / (np.float32(1.0) + np.exp(-hidden[(u - first) * k + c, 0]))


@njit(parallel=True, cache=True, nogil=True)
def _score_pairs(user_vectors: np.ndarray, user_terms: np.ndarray, item_vectors: np.ndarray,
                 item_terms: np.ndarray, candidates: np.ndarray, first_cross: np.ndarray, first_code: int,
                 kernels: Any, biases: Any, codes: np.ndarray, users_per_task: int, out: np.ndarray) -> None:
    users = candidates.shape[0]
    for task in prange((users + users_per_task - 1) // users_per_task):
        first = task * users_per_task
        _score_block(user_vectors, user_terms, item_vectors, item_terms, candidates, first_cross, first_code,
                     kernels, biases, codes, first, min(first + users_per_task, users), out)


class CpuPairs:
    """The per-pair step of the split DLRM with the layers of ``parts`` (a :class:`DLRMParts`)."""

    def __init__(self, parts: Any) -> None:
        self.first_cross = np.ascontiguousarray(parts.first_cross, dtype=np.float32)
        self.first_code = int(cpu_activation_codes([parts.first_activation])[0])
        self.codes = cpu_activation_codes([activation for _, _, activation in parts.rest])
        self.kernels, self.biases = List(), List()
        for kernel, bias, _ in parts.rest:
            kernel = np.ascontiguousarray(np.asarray(kernel), dtype=np.float32)
            self.kernels.append(kernel)
            self.biases.append(np.zeros(kernel.shape[1], np.float32) if bias is None
                               else np.ascontiguousarray(np.asarray(bias), dtype=np.float32))

    def __call__(self, user_vectors: np.ndarray, user_terms: np.ndarray, item_vectors: np.ndarray,
                 item_terms: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """``[users, k]`` click probabilities; ``candidates`` index the item arrays' rows."""
        from .topk import single_thread_blas

        out = np.empty(candidates.shape, dtype=np.float32)
        with single_thread_blas():
            _score_pairs(np.ascontiguousarray(user_vectors, dtype=np.float32),
                         np.ascontiguousarray(user_terms, dtype=np.float32),
                         np.ascontiguousarray(item_vectors, dtype=np.float32),
                         np.ascontiguousarray(item_terms, dtype=np.float32),
                         np.ascontiguousarray(candidates, dtype=np.int64), self.first_cross, self.first_code,
                         self.kernels, self.biases, self.codes, USERS_PER_TASK, out)
        return out
