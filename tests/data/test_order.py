import numpy as np
import pytest

from olmo_train.data.order import derive_key, permute


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 12345], ids=lambda n: f"n{n}")
def test_permute_is_a_bijection(n):
    p = permute(np.arange(n), n, derive_key(3, "x"))
    assert np.array_equal(np.sort(p), np.arange(n))


def test_permute_depends_on_key_and_is_pointwise():
    n = 10_000
    a, b = permute(np.arange(n), n, derive_key(0)), permute(np.arange(n), n, derive_key(1))
    assert (a != b).mean() > 0.99
    idx = np.array([9999, 5, 17, 5])
    assert np.array_equal(permute(idx, n, derive_key(0)), a[idx])  # any index alone, no replay
    assert abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.05


def test_order_is_pinned():
    # The data order is a contract with every checkpoint ever written: these values must never change.
    assert derive_key(0, "mix-pass", 0) == 8499557184659015824
    assert permute(np.arange(10), 10, derive_key(1234)).tolist() == [7, 0, 2, 3, 8, 4, 6, 9, 5, 1]


def test_permute_rejects_out_of_range():
    with pytest.raises(IndexError):
        permute(np.array([10]), 10, 0)
