"""kernels.reparam: DBB's transforms I-VI, each against the branches it replaces, written out in
NumPy (value) and as the literal branch computation in JAX (gradient, float64), over generated
shapes."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kshapes_jax import kernels

EXAMPLES = hypothesis.settings(max_examples=12, deadline=None)


def np_conv(x, w, stride=1, pad=0, groups=1):
  """Grouped conv in NumPy, NHWC input, HWIO kernel, symmetric int padding (negative: none)."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, cin, out = w.shape
  ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  y = np.zeros((x.shape[0], ho, wo, out))
  og = out // groups
  for g in range(groups):
    xs = x[..., g * cin : (g + 1) * cin]
    for i in range(kh):
      for j in range(kw):
        patch = xs[
          :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
        ]
        y[..., g * og : (g + 1) * og] += patch @ w[i, j, :, g * og : (g + 1) * og]
  return y


def np_avg_pool(x, k, stride, pad):
  """kxk average pooling in NumPy over a zero-padded NHWC map, every tap counted."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  n = (x.shape[1] - k) // stride + 1
  m = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], n, m, x.shape[3]))
  for i in range(n):
    for j in range(m):
      out[:, i, j] = x[:, i * stride : i * stride + k, j * stride : j * stride + k].mean((1, 2))
  return out


def lax_conv(x, w, stride=1, pad=0, groups=1):
  return jax.lax.conv_general_dilated(
    x,
    w,
    (stride, stride),
    [(pad, pad)] * 2,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
    precision=jax.lax.Precision.HIGHEST,
  )


shapes = st.fixed_dictionaries(
  {
    "k": st.sampled_from([1, 3, 5]),
    "groups": st.sampled_from([1, 2]),
    "cin": st.integers(1, 3),
    "t": st.integers(1, 3),
    "out": st.integers(1, 3),
    "stride": st.sampled_from([1, 2]),
    "seed": st.integers(0, 2**16),
  }
)


def _one_by_k_case(s):
  g, k = s["groups"], s["k"]
  rng = np.random.default_rng(s["seed"])
  cin, t, out = s["cin"] * g, s["t"] * g, s["out"] * g
  arrays = (
    rng.normal(size=(1, 1, cin // g, t)),
    rng.normal(size=t),
    rng.normal(size=(k, k, t // g, out)),
    rng.normal(size=out),
  )
  return arrays, rng.normal(size=(2, 7, 7, cin))


@EXAMPLES
@hypothesis.given(shapes)
def test_fuse_1x1_kxk_is_the_two_convs_with_bias_padding(s):
  """Transform III: 1x1 conv + b1, the map padded with b1 (BNAndPadLayer), kxk conv + b2."""
  g, p, stride = s["groups"], s["k"] // 2, s["stride"]
  (k1, b1, k2, b2), x = _one_by_k_case(s)
  mid = np_conv(x, k1, groups=g) + b1
  mid = np.pad(mid - b1, ((0, 0), (p, p), (p, p), (0, 0))) + b1
  expected = np_conv(mid, k2, stride, 0, g) + b2
  with jax.enable_x64(True):
    kernel, bias = kernels.fuse_1x1_kxk(k1, b1, k2, b2, groups=g)
  got = np_conv(x, np.asarray(kernel), stride, p, g) + np.asarray(bias)
  np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("groups,k,stride", [(1, 3, 1), (2, 3, 2), (2, 5, 1)])
def test_fuse_1x1_kxk_gradient_is_the_two_convs_gradient(groups, k, stride):
  """The fused conv's gradient against the literal branch's, both in JAX, float64."""
  s = {"groups": groups, "k": k, "cin": 2, "t": 3, "out": 2, "seed": k + stride}
  p = k // 2
  args, x = _one_by_k_case(s)
  with jax.enable_x64(True):
    cot = np.random.default_rng(0).normal(
      size=(2, (7 - 1) // stride + 1, (7 - 1) // stride + 1, 2 * groups)
    )

    def fused(k1, b1, k2, b2):
      kernel, bias = kernels.fuse_1x1_kxk(k1, b1, k2, b2, groups=groups)
      return jnp.sum(cot * (lax_conv(x, kernel, stride, p, groups) + bias))

    def literal(k1, b1, k2, b2):
      mid = lax_conv(x, k1, groups=groups) + b1
      mid = jnp.pad(mid - b1, ((0, 0), (p, p), (p, p), (0, 0))) + b1
      return jnp.sum(cot * (lax_conv(mid, k2, stride, 0, groups) + b2))

    args = tuple(map(jnp.asarray, args))
    grads = [jax.jit(jax.grad(f, (0, 1, 2, 3)))(*args) for f in (fused, literal)]
    for a, b in zip(*grads):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@EXAMPLES
@hypothesis.given(shapes, st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float64]))
def test_fuse_1x1_avg_is_the_1x1_then_the_pooling(s, dtype):
  """III + V in one: the 1x1 conv then kxk average pooling (NumPy), and bit for bit the general
  transform III of the 1x1 and the pooling kernel, in each dtype."""
  g, k, stride = s["groups"], s["k"], s["stride"]
  rng = np.random.default_rng(s["seed"])
  cin, out = s["cin"] * g, s["out"] * g
  first = rng.normal(size=(1, 1, cin // g, out))
  x = rng.normal(size=(2, 7, 7, cin))
  p = k // 2
  pooled = np_avg_pool(np_conv(x, first, groups=g), k, stride, p)
  with jax.enable_x64(True):
    first_d = jnp.asarray(first, dtype)
    kernel = kernels.fuse_1x1_avg(first_d, k)
    general = kernels.fuse_1x1_kxk(
      first_d, None, kernels.avg_pool_kernel(out, k, g, dtype), groups=g
    )[0]
    chex.assert_trees_all_equal(kernel, general.astype(kernel.dtype))
    assert kernel.dtype == dtype and kernel.shape == (k, k, cin // g, out)
    if dtype == jnp.float64:
      got = np_conv(x, np.asarray(kernel), stride, p, g)
      np.testing.assert_allclose(got, pooled, rtol=1e-12, atol=1e-12)


@EXAMPLES
@hypothesis.given(shapes)
def test_avg_pool_identity_pad_and_concat_are_their_ops(s):
  """Transforms V (average pooling, every tap counted), VI (a centred smaller kernel), IV
  (concatenation) and the identity, each against its op in NumPy."""
  g, k, stride = s["groups"], s["k"], s["stride"]
  rng = np.random.default_rng(s["seed"])
  c = s["cin"] * g
  x = rng.normal(size=(2, 7, 7, c))
  p = k // 2
  pooled = np_avg_pool(x, k, stride, p)
  with jax.enable_x64(True):
    avg = np.asarray(kernels.avg_pool_kernel(c, k, c, jnp.float64))  # depthwise: channel by channel
    np.testing.assert_allclose(np_conv(x, avg, stride, p, c), pooled, rtol=1e-12, atol=1e-12)
    # a grouped conv with the pooling kernel pools each channel of its group (DBB's transV_avg)
    np.testing.assert_allclose(
      np_conv(x, np.asarray(kernels.avg_pool_kernel(c, k, g, jnp.float64)), stride, p, g),
      pooled,
      rtol=1e-12,
      atol=1e-12,
    )
    identity = np.asarray(kernels.identity_kernel(c, g, k, jnp.float64))
    np.testing.assert_array_equal(np_conv(x, identity, 1, p, g), x)
    small = rng.normal(size=(1, 1, c // g, c))
    np.testing.assert_allclose(
      np_conv(x, np.asarray(kernels.pad_kernel(small, k)), stride, p, g),
      np_conv(x, small, stride, 0, g),
      rtol=1e-12,
      atol=1e-12,
    )
    a, b = rng.normal(size=(k, k, c, 2)), rng.normal(size=(k, k, c, 3))
    both, bias = kernels.concat_depth([a, b], [np.zeros(2), np.ones(3)])
    np.testing.assert_allclose(
      np_conv(x, np.asarray(both), stride, p) + bias,
      np.concatenate([np_conv(x, a, stride, p), np_conv(x, b, stride, p) + 1], -1),
      rtol=1e-12,
      atol=1e-12,
    )
    summed, total = kernels.add_branches([a, 2 * a], [np.ones(2), None])
    np.testing.assert_allclose(np.asarray(summed), 3 * a)
    np.testing.assert_allclose(np.asarray(total), np.ones(2))


def test_pad_kernel_places_a_kernel_at_an_offset():
  hor = np.arange(3.0).reshape(1, 3, 1, 1)
  padded = np.asarray(kernels.pad_kernel(hor, 3, offset=(2, 0)))[..., 0, 0]
  np.testing.assert_array_equal(padded, [[0, 0, 0], [0, 0, 0], [0, 1, 2]])
  np.testing.assert_array_equal(np.asarray(kernels.pad_kernel(hor, 3))[1, :, 0, 0], [0, 1, 2])


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: kernels.fuse_1x1_kxk(np.zeros((1, 1, 2, 3)), None, np.zeros((3, 3, 2, 4))),
      r"second \(k, k, T / groups, O\)",
    ),
    (
      lambda: kernels.fuse_1x1_kxk(np.zeros((3, 3, 2, 4)), None, np.zeros((3, 3, 4, 4))),
      r"first must be \(1, 1, I, T\)",
    ),
    (
      lambda: kernels.fuse_1x1_kxk(np.zeros((1, 1, 2, 4)), np.zeros(3), np.zeros((3, 3, 4, 4))),
      r"first_bias must be \(T,\)",
    ),
    (lambda: kernels.fuse_1x1_avg(np.zeros((3, 3, 2, 4)), 3), r"first must be a \(1, 1, I, O\)"),
    (lambda: kernels.fuse_1x1_avg(np.zeros((1, 1, 2, 4)), 0), "kernel_size"),
    (lambda: kernels.pad_kernel(np.zeros((1, 2, 1, 1)), 3), "has no centre"),
    (lambda: kernels.pad_kernel(np.zeros((1, 3, 1, 1)), 3, offset=(1, 1)), "does not fit"),
    (
      lambda: kernels.add_branches([np.zeros((3, 3, 1, 1)), np.zeros((1, 1, 1, 1))]),
      "pad smaller ones",
    ),
    (lambda: kernels.add_branches([]), "at least one"),
    (
      lambda: kernels.concat_depth([np.zeros((3, 3, 1, 1)), np.zeros((3, 3, 2, 1))]),
      r"kernels\[1\]",
    ),
    (lambda: kernels.identity_kernel(4, 3), "must divide"),
    (lambda: kernels.identity_kernel(4, 1, 2), "odd kernel_size"),
    (lambda: kernels.scale_output(np.zeros((3, 3, 1, 2)), np.ones(3)), r"scale must be \(O,\)"),
  ],
)
def test_transforms_say_what_shape_they_expected(call, match):
  with pytest.raises(ValueError, match=match):
    call()
