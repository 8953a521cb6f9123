"""The conv wrapper and the properties that hold for all inputs."""

import functools

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kshapes_jax.conv import (
  active_conv_gather,
  conv,
  conv_as_matmul,
  conv_with_matmul_kernel_grad,
  cpu_prefers_matmul,
  output_geometry,
  resolve_padding,
)
from kshapes_jax.kernels import BatchNormParams, active_kernel, fuse_acb


def _direct_conv(x, k, stride, pads):
  """A loop-free NumPy cross-correlation, NHWC / HWIO."""
  x = np.pad(x, ((0, 0), *pads, (0, 0)))
  kh, kw = k.shape[:2]
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  out = 0
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride]
      out = out + patch @ k[i, j]
  return out


@pytest.mark.parametrize(
  "padding, pads",
  [
    ("VALID", ((0, 0), (0, 0))),
    (1, ((1, 1), (1, 1))),
    (((2, 0), (0, 1)), ((2, 0), (0, 1))),
  ],
)
def test_conv_matches_a_direct_loop(padding, pads, x64, rng):
  x = rng.normal(size=(2, 7, 6, 3))
  k = rng.normal(size=(3, 3, 3, 4))
  for stride in (1, 2):
    np.testing.assert_allclose(
      conv(x, k, stride=stride, padding=padding),
      _direct_conv(x, k, stride, pads),
      rtol=1e-10,
      atol=1e-12,
    )


def test_same_padding_is_laxs(rng):
  assert resolve_padding("SAME", (8, 7), (3, 3), 2) == ((0, 1), (1, 1))
  assert resolve_padding("same", (8, 8), (5, 5), 1) == ((2, 2), (2, 2))
  assert output_geometry((8, 7), 1, 2, "SAME") == ((4, 4), (1, 0))
  assert output_geometry((8, 7), 2, 1, "VALID") == ((4, 3), (2, 2))


def test_groups_bias_and_dtype(rng):
  x = jnp.asarray(rng.normal(size=(1, 5, 5, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)
  b = jnp.arange(6, dtype=jnp.float32)
  y = conv(x, k, groups=2, bias=b, precision=lax.Precision.HIGHEST)
  halves = [
    conv(x[..., :2], k[..., :3], precision="highest"),
    conv(x[..., 2:], k[..., 3:], precision="highest"),
  ]
  chex.assert_trees_all_close(y, jnp.concatenate(halves, -1) + b, rtol=1e-5, atol=1e-5)
  y16 = conv(x, k, groups=2, dtype=jnp.bfloat16)
  assert y16.dtype == jnp.bfloat16
  chex.assert_trees_all_close(y16.astype(jnp.float32), y - b, atol=0.3, rtol=0.05)
  # the backend's default: float32 on a CPU, TF32 (10-bit mantissa) on a GPU
  y_default = conv(x, k, groups=2)
  chex.assert_trees_all_close(y_default, y - b, rtol=2e-3, atol=2e-2)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: conv(np.zeros((5, 5, 4)), np.zeros((3, 3, 4, 1))), r"x must be \(N, H, W, C\)"),
    (
      lambda: conv(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 3, 1))),
      r"expected kernel shape \(3, 3, 4, O\)",
    ),
    (lambda: conv(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 2, 3)), groups=2), "groups = 2"),
    (
      lambda: conv(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 4, 2)), padding="FULL"),
      "padding must be",
    ),
    (lambda: conv(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 4, 2)), stride=0), "stride must be"),
    (
      lambda: conv(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 4, 2)), bias=np.zeros(3)),
      r"bias must be \(O,\)",
    ),
  ],
)
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# --- small maps: the conv as a matmul on CPU ---------------------------------


def _numpy_conv_and_vjp(x, k, cot, stride, pads, dilation, groups):
  """The conv, NHWC / HWIO, and its gradients for cotangent `cot`, tap by tap in NumPy.

  Negative pads crop. Returns (y, dx, dk).
  """
  (sh, sw), (dh, dw) = stride, dilation
  n, h, w, c = x.shape
  kh, kw, ci, co = k.shape
  crop = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pads]
  xp = np.pad(x, ((0, 0), *((max(lo, 0), max(hi, 0)) for lo, hi in pads), (0, 0)))
  xp = xp[:, crop[0][0] : xp.shape[1] - crop[0][1], crop[1][0] : xp.shape[2] - crop[1][1]]
  oh = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
  ow = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
  y = np.zeros((n, oh, ow, co))
  dxp, dk = np.zeros_like(xp), np.zeros_like(k)
  co_g = co // groups
  for a in range(kh):
    for b in range(kw):
      rows = slice(a * dh, a * dh + (oh - 1) * sh + 1, sh)
      cols = slice(b * dw, b * dw + (ow - 1) * sw + 1, sw)
      for g in range(groups):
        cin, cout = slice(g * ci, (g + 1) * ci), slice(g * co_g, (g + 1) * co_g)
        patch = xp[:, rows, cols, cin]
        y[..., cout] += patch @ k[a, b, :, cout]
        dk[a, b, :, cout] += np.einsum("nhwc,nhwo->co", patch, cot[..., cout])
        dxp[:, rows, cols, cin] += cot[..., cout] @ k[a, b, :, cout].T
  # undo the crop (zeros), then the pad
  dxp = np.pad(dxp, ((0, 0), crop[0], crop[1], (0, 0)))
  top, left = max(pads[0][0], 0), max(pads[1][0], 0)
  return y, dxp[:, top : top + h, left : left + w], dk


def _random_conv_case(rng, hw, khw, stride, dilation, pads, groups):
  """x (2, H, W, 4), a kernel, a cotangent and the NumPy conv's (value, dx, dkernel); a geometry
  whose padded input is smaller than the kernel's extent is skipped (hypothesis.assume)."""
  extents = [(k - 1) * d + 1 for k, d in zip(khw, dilation)]
  hypothesis.assume(all(s + lo + hi >= e for s, (lo, hi), e in zip(hw, pads, extents)))
  x = rng.normal(size=(2, *hw, 4))
  k = rng.normal(size=(*khw, 4 // groups, 4))
  oh = (hw[0] + sum(pads[0]) - extents[0]) // stride[0] + 1
  ow = (hw[1] + sum(pads[1]) - extents[1]) // stride[1] + 1
  cot = rng.normal(size=(2, oh, ow, 4))
  return x, k, cot, _numpy_conv_and_vjp(x, k, cot, stride, pads, dilation, groups)


@hypothesis.given(
  st.tuples(st.integers(1, 6), st.integers(1, 6)),
  st.tuples(st.integers(1, 5), st.integers(1, 5)),
  st.tuples(st.integers(1, 3), st.integers(1, 3)),
  st.tuples(st.integers(1, 2), st.integers(1, 2)),
  st.lists(st.integers(-1, 3), min_size=4, max_size=4),
  st.sampled_from([1, 2, 4]),
)
@hypothesis.settings(max_examples=15, deadline=None)
def test_the_matmul_form_is_the_conv_in_value_and_gradient(hw, khw, stride, dilation, p, groups):
  pads = ((p[0], p[1]), (p[2], p[3]))
  rng = np.random.default_rng([*hw, *khw, *stride, *dilation, *(q + 1 for q in p), groups])
  x, k, cot, want = _random_conv_case(rng, hw, khw, stride, dilation, pads, groups)
  with jax.enable_x64(True):

    @jax.jit
    def value_and_vjps(x, k, cot):
      def matmul(x, k):
        return conv_as_matmul(x, k, stride, pads, dilation, groups, None)

      def wrapper(x, k):  # whichever form it takes for this shape
        return conv(
          x, k, stride=stride, padding=pads, dilation=dilation, groups=groups, allow_crop=True
        )

      return [(lambda y, vjp: (y, *vjp(cot)))(*jax.vjp(f, x, k)) for f in (matmul, wrapper)]

    got, got_conv = value_and_vjps(x, k, cot)
  for g, gc, w in zip(got, got_conv, want):
    np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gc, w, rtol=1e-10, atol=1e-10)


def test_the_matmul_form_takes_the_shapes_xla_runs_slowly_on_cpu():
  same = lambda k: ((k // 2, k // 2),) * 2  # noqa: E731
  # ResNet-18's last stage at 64 px (2x2 maps), at 32 px (1x1), at 96 px (3x3), its strided
  # entry (4x4 -> 2x2)
  assert cpu_prefers_matmul((2, 2), (3, 3), (1, 1), same(3), (1, 1))
  assert cpu_prefers_matmul((1, 1), (3, 3), (1, 1), same(3), (1, 1))
  assert cpu_prefers_matmul((3, 3), (3, 3), (1, 1), same(3), (1, 1))
  assert cpu_prefers_matmul((4, 4), (3, 3), (2, 2), same(3), (1, 1))
  # every 1x1 kernel, at any map size
  assert cpu_prefers_matmul((1, 1), (1, 1), (1, 1), same(1), (1, 1))
  assert cpu_prefers_matmul((56, 56), (1, 1), (2, 2), same(1), (1, 1))
  # maps beyond the extent keep XLA's conv
  assert not cpu_prefers_matmul((4, 4), (3, 3), (1, 1), same(3), (1, 1))
  assert not cpu_prefers_matmul((8, 8), (3, 3), (2, 2), same(3), (1, 1))
  assert not cpu_prefers_matmul((32, 32), (7, 7), (2, 2), same(7), (1, 1))
  # dilation widens the extent; one small axis is enough
  assert cpu_prefers_matmul((4, 4), (3, 3), (1, 1), same(3), (2, 2))
  assert cpu_prefers_matmul((8, 2), (3, 3), (1, 1), same(3), (1, 1))


def test_the_matmul_form_is_chosen_per_platform_when_lowered(rng):
  x = jnp.asarray(rng.normal(size=(2, 2, 2, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 8, 8)), jnp.float32)

  def hlo(x, platforms):
    f = jax.jit(lambda x, k: conv(x, k, padding=1, precision="highest"))
    return jax.export.export(f, platforms=platforms)(x, k).mlir_module()

  small, large = x, jnp.zeros((2, 4, 4, 8))
  assert "convolution" not in hlo(small, ("cpu",)) and "dot_general" in hlo(small, ("cpu",))
  assert "convolution" in hlo(small, ("cuda",)) and "convolution" in hlo(small, ("tpu",))
  assert "convolution" in hlo(large, ("cpu",))

  # float32 at HIGHEST: the same numbers as XLA's conv, value and both gradients
  def xla(x, k):
    return lax.conv_general_dilated(
      x,
      k,
      (1, 1),
      ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=lax.Precision.HIGHEST,
    )

  def ours(x, k):
    return conv(x, k, padding=1, precision="highest")

  cot = jnp.asarray(rng.normal(size=(2, 2, 2, 8)), jnp.float32)
  value_and_vjp = jax.jit(
    lambda f, x, k, cot: (lambda y, vjp: (y, *vjp(cot)))(*jax.vjp(f, x, k)), static_argnums=0
  )
  chex.assert_trees_all_close(
    value_and_vjp(ours, x, k, cot), value_and_vjp(xla, x, k, cot), rtol=1e-5, atol=1e-5
  )


@hypothesis.given(
  st.tuples(st.integers(2, 6), st.integers(2, 6)),
  st.tuples(st.integers(1, 4), st.integers(1, 4)),
  st.tuples(st.integers(1, 3), st.integers(1, 3)),
  st.tuples(st.integers(1, 2), st.integers(1, 2)),
  st.lists(st.integers(0, 2), min_size=4, max_size=4),
  st.sampled_from([1, 2, 4]),
)
@hypothesis.settings(max_examples=15, deadline=None)
def test_the_matmul_kernel_gradient_is_the_convs_in_value_and_gradient(
  hw, khw, stride, dilation, p, groups
):
  """XLA's value and input gradient, the matmuls' kernel gradient: all three equal a NumPy conv
  and its vjp (float64); the kernel tangent equals the im2col form's."""
  pads = ((p[0], p[1]), (p[2], p[3]))
  rng = np.random.default_rng([*hw, *khw, *stride, *dilation, *p, groups])
  x, k, cot, want = _random_conv_case(rng, hw, khw, stride, dilation, pads, groups)
  geometry = (stride, pads, dilation, groups, None)
  with jax.enable_x64(True):
    y, vjp = jax.vjp(lambda x, k: conv_with_matmul_kernel_grad(x, k, *geometry), x, k)
    got = (y, *vjp(cot))
    # the tangent in the kernel alone, as its transpose is taken: the matmuls' sum
    dk = rng.normal(size=k.shape)
    tangent = jax.jvp(lambda k: conv_with_matmul_kernel_grad(x, k, *geometry), (k,), (dk,))[1]
    direct = conv_as_matmul(x, dk, *geometry)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(tangent, direct, rtol=1e-10, atol=1e-10)


def test_the_matmul_kernel_gradient_composes_in_every_mode(rng):
  """Forward mode, reverse mode, second order, and one argument without a tangent (the image into a
  first layer, a frozen kernel): checked against finite differences in float64."""
  x = rng.normal(size=(2, 5, 5, 3))
  k = rng.normal(size=(3, 3, 3, 4)) * 0.3
  geometry = ((2, 1), ((1, 1), (1, 0)), (1, 1), 1, None)
  with jax.enable_x64(True):

    def f(x, k):
      return jnp.sum(jnp.tanh(conv_with_matmul_kernel_grad(x, k, *geometry)))

    jax.test_util.check_grads(f, (x, k), order=2, modes=("fwd", "rev"), eps=1e-5)
    jax.test_util.check_grads(lambda k: f(x, k), (k,), order=1, modes=("rev",), eps=1e-5)
    jax.test_util.check_grads(lambda x: f(x, k), (x,), order=1, modes=("rev",), eps=1e-5)


def test_the_matmul_kernel_gradient_is_taken_on_cpu_only(rng):
  """The CPU lowering of a conv's gradient has the matmuls; the GPU's and TPU's do not."""
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 4, 32)), jnp.float32)

  def grads(platforms):
    f = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k, padding=1) ** 2), argnums=(0, 1)))
    return jax.export.export(f, platforms=platforms)(x, k).mlir_module()

  assert "dot_general" in grads(("cpu",))
  assert "dot_general" not in grads(("cuda",)) and "dot_general" not in grads(("tpu",))


# --- laws that hold for all inputs ---------------------------------------------

_X = np.random.default_rng(1).normal(size=(1, 7, 6, 2)).astype(np.float32)
_W = np.random.default_rng(2).normal(size=(5, 2, 3)).astype(np.float32)


@jax.jit
def _splat_minus_gather(p):
  a = conv(_X, active_kernel(_W, p, 3), stride=2, precision="highest")
  b = active_conv_gather(_X, _W, p, stride=2, radius=3, precision="highest")
  return jnp.max(jnp.abs(a - b))


@hypothesis.given(hnp.arrays(np.float32, (5, 2), elements=st.floats(-3, 3, width=32)))
@hypothesis.settings(max_examples=60, deadline=None)
def test_splat_equals_gather_for_any_positions_within_the_radius(p):
  assert float(_splat_minus_gather(p)) < 1e-4


_K = np.random.default_rng(3).normal(size=(3, 3, 2, 3)).astype(np.float32)
_H = np.random.default_rng(4).normal(size=(1, 3, 2, 3)).astype(np.float32)
_V = np.random.default_rng(5).normal(size=(3, 1, 2, 3)).astype(np.float32)


@jax.jit
def _fusion_error(stats):
  bns = [BatchNormParams(s[0], s[1], s[2], jnp.abs(s[3]) + 0.1) for s in stats]
  kernel, bias = fuse_acb(_K, bns[0], _H, bns[1], _V, bns[2])
  exact = functools.partial(conv, precision="highest")
  fused = exact(_X, kernel, padding=1, bias=bias)
  bn = lambda y, b: (y - b.mean) * jax.lax.rsqrt(b.var + 1e-5) * b.scale + b.bias
  branches = (
    bn(exact(_X, _K, padding=1), bns[0])
    + bn(exact(_X, _H, padding=((0, 0), (1, 1))), bns[1])
    + bn(exact(_X, _V, padding=((1, 1), (0, 0))), bns[2])
  )
  return jnp.max(jnp.abs(fused - branches) / (1 + jnp.abs(branches)))


@hypothesis.given(hnp.arrays(np.float32, (3, 4, 3), elements=st.floats(-3, 3, width=32)))
@hypothesis.settings(max_examples=60, deadline=None)
def test_acb_fusion_is_exact_for_any_bn_statistics(stats):
  assert float(_fusion_error(stats)) < 1e-4
