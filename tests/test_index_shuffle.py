"""The random-access permutation: a bijection for every size, a function of its key, uniform."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from netalchemy import index_shuffle


_values = jax.jit(lambda keys, positions, n: jax.vmap(lambda k: index_shuffle.permute(k, positions, n))(keys),
                  static_argnums=2)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 256, 257, 1000, 4000, 4097, 60000])
def test_every_size_gives_a_permutation(n):
    for seed in range(3):
        values = np.asarray(_values(jax.random.split(jax.random.key(seed), 1), jnp.arange(n), n))[0]
        assert sorted(values.tolist()) == list(range(n))


def test_random_access_agrees_with_the_whole_permutation_and_keys_differ():
    key = jax.random.key(11)
    whole = np.asarray(index_shuffle.permute(key, jnp.arange(4000), 4000))
    some = jnp.array([5, 17, 3999, 0, 2048])
    np.testing.assert_array_equal(index_shuffle.permute(key, some, 4000), whole[np.asarray(some)])
    other = np.asarray(index_shuffle.permute(jax.random.key(12), jnp.arange(4000), 4000))
    assert np.mean(other == whole) < 0.01


@pytest.mark.parametrize("n", [320, 4096])
def test_values_at_fixed_positions_are_uniform_and_independent(n):
    # Chi-square over 1e5 keys: the value at position 0 and at n/2 (n bins), and the pair at
    # positions 0, 1 in 16 × 16 equal bins. Too few rounds (8 at these sizes) fail these.
    keys = jax.random.split(jax.random.key(3), 100_000)
    v = np.asarray(_values(keys, jnp.array([0, 1, n // 2]), n))
    for column in (0, 2):
        assert stats.chisquare(np.bincount(v[:, column], minlength=n)).pvalue > 1e-3
    bins = (v[:, 0] * 16 // n) * 16 + v[:, 1] * 16 // n
    assert stats.chisquare(np.bincount(bins, minlength=256)).pvalue > 1e-3
    assert abs(np.mean(v[:, 0] < v[:, 1]) - 0.5) < 0.01


def test_small_sizes_draw_every_permutation_equally_often():
    n = 4
    keys = jax.random.split(jax.random.key(5), 48_000)
    v = np.asarray(_values(keys, jnp.arange(n), n))
    counts = {p: 0 for p in itertools.permutations(range(n))}
    for row in map(tuple, v):
        counts[row] += 1
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3
