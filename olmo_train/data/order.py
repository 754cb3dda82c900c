"""Stateless seeded permutations: position i of a shuffled range [0, n) computed directly, in O(1) memory.

A balanced Feistel network over the smallest even number of bits covering n is a bijection on [0, 2^bits);
cycle walking (re-applying it while the value is >= n) restricts it to a bijection on [0, n). Since 2^bits < 4n,
a walk takes under 4 applications on average. So the data order is a pure function of (seed, index): no
permutation array to build, store or replay, whatever the dataset size, world size or micro-batch size.
"""

from __future__ import annotations

import zlib

import numpy as np

_ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def derive_key(*parts: int | str) -> int:
    """A 64-bit key from ints and strings (stable across processes and machines, unlike hash())."""
    key = 0
    for part in parts:
        value = zlib.crc32(part.encode()) if isinstance(part, str) else int(part) & _MASK64
        key = int(_mix64(np.array([(key * _GOLDEN + value + 1) & _MASK64], dtype=np.uint64))[0])
    return key


def _feistel(x: np.ndarray, half_bits: int, round_keys: np.ndarray) -> np.ndarray:
    mask = np.uint64((1 << half_bits) - 1)
    left, right = x >> np.uint64(half_bits), x & mask
    for k in round_keys:
        left, right = right, left ^ (_mix64(right ^ k) & mask)
    return (left << np.uint64(half_bits)) | right


def permute(index: np.ndarray, n: int, key: int) -> np.ndarray:
    """perm_key(index) for a pseudo-random permutation of [0, n); index: int array with values in [0, n)."""
    if n <= 0:
        raise ValueError(f"cannot permute an empty range (n={n})")
    idx = np.asarray(index, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"permutation index out of range [0, {n})")
    half_bits = max(1, (int(n - 1).bit_length() + 1) // 2)
    round_keys = _mix64(np.arange(1, _ROUNDS + 1, dtype=np.uint64) * np.uint64(_GOLDEN) ^ np.uint64(key))
    y = _feistel(idx.astype(np.uint64), half_bits, round_keys)
    outside = np.flatnonzero(y >= np.uint64(n))
    while outside.size:
        y[outside] = _feistel(y[outside], half_bits, round_keys)
        outside = outside[y[outside] >= np.uint64(n)]
    return y.astype(np.int64)
