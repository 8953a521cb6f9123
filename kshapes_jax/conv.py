"""The one convolution every method ends in, and the literal ACU reference.

`conv` is the single wrapper around `lax.conv_general_dilated` (NHWC inputs,
HWIO kernels): every layer builds its effective kernel with the pure
functions of `kshapes_jax.kernels` and then calls it once.

`active_conv_gather` is the Active Convolution Unit written as the paper
writes it (eq. 5-9 of Jeon and Kim): bilinear samples of the input at each
synapse position around every output pixel, zeros outside the image, then a
weighted sum. It is the reference that the fast splat path
(`kernels.active_kernel` + `conv`) must match, and it also takes per-pixel
positions, which no dense kernel can express.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike, DTypeLike

from kshapes_jax import _validation
from kshapes_jax.kernels import active as _active

Padding = str | int | Sequence[tuple[int, int]]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def resolve_padding(
  padding: Padding,
  input_hw: Sequence[int],
  kernel_hw: Sequence[int],
  stride: int | Sequence[int] = 1,
  dilation: int | Sequence[int] = 1,
  *,
  allow_crop: bool = False,
) -> tuple[tuple[int, int], tuple[int, int]]:
  """Explicit ((top, bottom), (left, right)) padding, as lax would apply it.

  Args:
    padding: "SAME", "VALID", an int (the same on all four sides) or
      ((top, bottom), (left, right)).
    input_hw: (H, W) of the input.
    kernel_hw: (kh, kw) of the kernel before dilation.
    stride: the conv stride.
    dilation: the kernel dilation.
    allow_crop: accept negative pads, which crop the input as lax does.

  Returns:
    The two (low, high) pairs.

  Raises:
    ValueError: for an unknown padding string, a malformed pair list, or a
      negative or boolean pad (negative: unless `allow_crop`).
  """
  stride = _validation.pair("stride", stride)
  dilation = _validation.pair("dilation", dilation)
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(
        f"padding must be 'SAME', 'VALID', an int or ((t, b), (l, r)), got {padding!r}"
      )
    extent = [(k - 1) * d + 1 for k, d in zip(kernel_hw, dilation)]
    same_or_valid = lax.padtype_to_pads(tuple(input_hw), extent, stride, padding.upper())
    return tuple((int(lo), int(hi)) for lo, hi in same_or_valid)  # type: ignore[return-value]
  low = -math.inf if allow_crop else 0
  message = (
    f"padding must be 'SAME', 'VALID', an int{'' if allow_crop else ' >= 0'} or "
    f"((t, b), (l, r)) of them, got {padding!r}"
  )
  spec: Any = ((padding, padding), (padding, padding)) if _validation.is_int(padding) else padding
  try:
    pads = tuple((lo, hi) for lo, hi in spec)
  except (TypeError, ValueError) as e:
    raise ValueError(message) from e
  if len(pads) != 2:
    raise ValueError(f"padding needs one (low, high) pair per spatial axis, got {padding!r}")
  # lax would crop with a negative pad; True would pad by 1
  if not all(_validation.is_int(p) and p >= low for pair in pads for p in pair):
    raise ValueError(message)
  return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]


def conv(
  x: ArrayLike,
  kernel: ArrayLike,
  *,
  stride: int | Sequence[int] = 1,
  padding: Padding = "SAME",
  dilation: int | Sequence[int] = 1,
  groups: int = 1,
  bias: ArrayLike | None = None,
  dtype: DTypeLike | None = None,
  precision: lax.PrecisionLike = None,
  allow_crop: bool = False,
) -> jax.Array:
  """One 2-D convolution, NHWC input and HWIO kernel.

  Args:
    x: (N, H, W, C) input.
    kernel: (kh, kw, C / groups, O) kernel.
    stride: int or (sh, sw).
    padding: "SAME", "VALID", an int, or ((top, bottom), (left, right)).
    dilation: kernel dilation, int or (dh, dw).
    groups: feature groups; C and O must both be multiples of it.
    bias: optional (O,) bias added to the output.
    dtype: compute dtype for x and the kernel (e.g. jnp.bfloat16); by default
      the promoted dtype of the two.
    precision: None or "default" (the backend's default, fast: TF32 on a
      GPU, bf16 passes on a TPU, float32 on a CPU), "high", "highest"
      (exact float32 everywhere), or a `lax.Precision` /
      `lax.DotAlgorithmPreset`.
    allow_crop: accept negative pads, which crop the input (how the ACB
      and versatile branches line up with their square kernel); off by
      default, so that a negative padding is an error and not a crop.

  Returns:
    (N, H', W', O) output.

  Raises:
    ValueError: on ranks or channel counts that do not match, or an unknown
      precision or dtype.
  """
  n, h, w, c = _validation.require_rank("x", x, 4, "(N, H, W, C)")
  kh, kw, ci, co = _validation.require_rank("kernel", kernel, 4, "(kh, kw, C / groups, O)")
  if not _validation.is_int(groups) or groups < 1 or c % groups or co % groups:
    raise ValueError(f"groups = {groups!r} must be a positive int dividing C = {c} and O = {co}")
  if ci * groups != c:
    hint = ""
    if h == ci * groups:  # axis 1 holds the channels
      hint = f"; x {(n, h, w, c)} looks NCHW (PyTorch's layout): pass NHWC, x.transpose(0, 2, 3, 1)"
    elif kw * groups == c and ci == co:  # OIHW read as HWIO: (O, I, k, k), its axis 1 the inputs
      hint = (
        f"; the kernel {(kh, kw, ci, co)} looks OIHW (PyTorch's layout): pass HWIO, "
        "kernel.transpose(2, 3, 1, 0)"
      )
    raise ValueError(
      f"kernel has {ci} input channels per group but x has C = {c} channels in {groups} "
      f"group(s): expected kernel shape ({kh}, {kw}, {c // groups}, O){hint}"
    )
  stride = _validation.pair("stride", stride)
  dilation = _validation.pair("dilation", dilation)
  pads = resolve_padding(padding, (h, w), (kh, kw), stride, dilation, allow_crop=allow_crop)
  precision = _validation.precision(precision)
  dtype = jnp.result_type(x, kernel) if dtype is None else _validation.compute_dtype(dtype)
  x, kernel = jnp.asarray(x, dtype), jnp.asarray(kernel, dtype)

  geometry = (stride, pads, dilation, groups, precision)

  def lax_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _lax_conv(x, kernel, *geometry)

  if cpu_prefers_matmul((h, w), (kh, kw), stride, pads, dilation):
    # XLA's CPU convolution is up to tens of times slower than the same product as a
    # matmul on such shapes; other backends keep the conv (resolved when lowered).
    def as_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
      return conv_as_matmul(x, kernel, *geometry)

    y = lax.platform_dependent(x, kernel, cpu=as_matmul, default=lax_conv)
  else:
    # XLA's CPU kernel gradient is 1.2-42x slower than the same sum as one matmul per tap
    # (bench.kernel_grad); the value and the input gradient stay XLA's conv.
    def matmul_kernel_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
      return conv_with_matmul_kernel_grad(x, kernel, *geometry)

    y = lax.platform_dependent(x, kernel, cpu=matmul_kernel_grad, default=lax_conv)
  if bias is not None:
    _validation.require_shape("bias", bias, (co,), "(O,)")
    y = y + jnp.asarray(bias, dtype)
  return y


def _lax_conv(
  x: jax.Array,
  kernel: jax.Array,
  stride: Sequence[int],
  pads: Sequence[tuple[int, int]],
  dilation: Sequence[int],
  groups: int,
  precision: lax.PrecisionLike,
) -> jax.Array:
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=stride,
    padding=pads,
    rhs_dilation=dilation,
    dimension_numbers=_DIMENSION_NUMBERS,
    feature_group_count=groups,
    precision=precision,
  )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv_with_matmul_kernel_grad(
  x: jax.Array,
  kernel: jax.Array,
  stride: Sequence[int],
  pads: Sequence[tuple[int, int]],
  dilation: Sequence[int],
  groups: int,
  precision: lax.PrecisionLike,
) -> jax.Array:
  """XLA's convolution, whose derivative in the kernel is `conv_as_matmul`'s sum.

  The value and the derivative in x are `lax.conv_general_dilated`'s; the
  derivative in the kernel is the same sum as matmuls, one tap per step of a
  scan, so that reverse mode computes the kernel gradient as one matmul per
  tap, view^T @ dy (XLA's CPU kernel gradient is several times slower on
  common shapes: bench.kernel_grad measures both). The tangent is linear in
  (dx, dkernel), so forward mode, reverse mode and their compositions all
  work.

  Args:
    x: (N, H, W, C) input.
    kernel: (kh, kw, C / groups, O) kernel, same dtype as x.
    stride: (sh, sw).
    pads: ((top, bottom), (left, right)).
    dilation: (dh, dw).
    groups: feature groups.
    precision: of the conv and the matmul.

  Returns:
    (N, H', W', O) output.
  """
  return _lax_conv(x, kernel, stride, pads, dilation, groups, precision)


def _conv_with_matmul_kernel_grad_jvp(stride, pads, dilation, groups, precision, primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  geometry = (stride, pads, dilation, groups, precision)
  y = _lax_conv(x, kernel, *geometry)
  parts = []  # a symbolic zero tangent costs nothing (the image into a first layer)
  if not isinstance(dx, SymbolicZero):
    parts.append(_lax_conv(dx, kernel, *geometry))
  if not isinstance(dkernel, SymbolicZero):
    parts.append(_tap_matmuls(x, dkernel, *geometry))
  return y, functools.reduce(operator.add, parts) if parts else jnp.zeros_like(y)


conv_with_matmul_kernel_grad.defjvp(_conv_with_matmul_kernel_grad_jvp, symbolic_zeros=True)


def _tap_matmuls(
  x: jax.Array,
  kernel: jax.Array,
  stride: Sequence[int],
  pads: Sequence[tuple[int, int]],
  dilation: Sequence[int],
  groups: int,
  precision: lax.PrecisionLike,
) -> jax.Array:
  """`conv_as_matmul`'s sum, one tap per step of a scan: its transpose in the kernel (the kernel
  gradient) is one matmul view^T @ dy per step, and reverse mode keeps the padded input alone, not
  a view of it per tap (the body is rematerialized; XLA kept every view of every layer alive)."""
  n, _, _, c = x.shape
  (sh, sw), (dh, dw) = stride, dilation
  out_h, out_w, rows, cols, xp = _padded_taps(x, kernel.shape, stride, pads, dilation)
  if not rows or not cols:  # every tap reads padding: the conv is zero
    return jnp.zeros((n, out_h, out_w, kernel.shape[-1]), x.dtype)
  offsets = jnp.asarray([(a * dh, b * dw) for a in rows for b in cols], jnp.int32)
  taps = jnp.stack([kernel[a, b] for a in rows for b in cols])  # (T, C / groups, O)
  window = (n, (out_h - 1) * sh + 1, (out_w - 1) * sw + 1, c)

  @jax.checkpoint
  def add_tap(y: jax.Array, tap: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
    offset, weights = tap
    zero = jnp.zeros((), offset.dtype)  # one index dtype, whether x64 is on or not
    view = lax.dynamic_slice(xp, (zero, offset[0], offset[1], zero), window)[:, ::sh, ::sw]
    return y + _patch_product(view[..., None, :], weights[None], groups, precision), None

  y0 = jnp.zeros((n, out_h, out_w, kernel.shape[-1]), x.dtype)
  return lax.scan(add_tap, y0, (offsets, taps))[0]


def _extent(k: int, dilation: int) -> int:
  return (k - 1) * dilation + 1


def cpu_prefers_matmul(
  input_hw: Sequence[int],
  kernel_hw: Sequence[int],
  stride: Sequence[int],
  pads: Sequence[tuple[int, int]],
  dilation: Sequence[int],
) -> bool:
  """Whether XLA's CPU convolution is slower than `conv_as_matmul` on this conv.

  Two classes (bench.small_maps measures them and the boundary): a 1x1
  kernel (XLA's kernel gradient of a 1x1 conv is several times slower than
  the matmul it is), and a map smaller than the (dilated) kernel's extent
  on either axis, in or out, or an output map of exactly that extent (up to
  tens of times slower: ResNet-18's last stage below 128 px). On larger
  maps XLA's conv is as fast or faster, and it keeps them.

  Args:
    input_hw: (H, W) of the input.
    kernel_hw: (kh, kw) of the kernel.
    stride: (sh, sw).
    pads: ((top, bottom), (left, right)), as `resolve_padding` returns.
    dilation: (dh, dw).

  Returns:
    True where `conv` takes the matmul form on CPU.
  """
  if tuple(kernel_hw) == (1, 1):
    return True
  for size, k, s, (lo, hi), d in zip(input_hw, kernel_hw, stride, pads, dilation):
    extent = _extent(k, d)
    out = (size + lo + hi - extent) // s + 1
    if size < extent or out <= extent:
      return True
  return False


def _padded_taps(
  x: jax.Array,
  kernel_shape: Sequence[int],
  stride: Sequence[int],
  pads: Sequence[tuple[int, int]],
  dilation: Sequence[int],
) -> tuple[int, int, list[int], list[int], jax.Array]:
  """(H', W', the kernel rows and columns that read any input pixel, the padded input)."""
  _, h, w, _ = x.shape
  kh, kw = kernel_shape[:2]
  (sh, sw), (dh, dw) = stride, dilation
  (top, bottom), (left, right) = pads
  out_h = (h + top + bottom - _extent(kh, dh)) // sh + 1
  out_w = (w + left + right - _extent(kw, dw)) // sw + 1
  rows = _taps_reading_input(h, out_h, kh, sh, dh, top)
  cols = _taps_reading_input(w, out_w, kw, sw, dw, left)
  xp = lax.pad(
    x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0))
  )
  return out_h, out_w, rows, cols, xp


def _taps_reading_input(size: int, out: int, k: int, stride: int, dilation: int, low: int):
  """The kernel taps along one axis that read at least one input pixel (not only padding)."""
  return [
    i for i in range(k) if any(0 <= i * dilation + r * stride - low < size for r in range(out))
  ]


def conv_as_matmul(
  x: jax.Array,
  kernel: jax.Array,
  stride: Sequence[int],
  pads: Sequence[tuple[int, int]],
  dilation: Sequence[int],
  groups: int,
  precision: lax.PrecisionLike,
) -> jax.Array:
  """The convolution of `conv` as one matmul of input patches (im2col) with the kernel.

  y[n, i, j, o] = sum_{a, b, c} xp[n, i * sh + a * dh, j * sw + b * dw, c] * k[a, b, c, o],
  xp the padded input: each tap's strided view of xp is a patch column, and the
  taps that read only padding (statically known) are left out, so a 3x3 conv
  on a 1x1 map is a 1x1 conv. Equal to `lax.conv_general_dilated` up to the
  order of the sum, in value and gradient.

  Args:
    x: (N, H, W, C) input.
    kernel: (kh, kw, C / groups, O) kernel, same dtype as x.
    stride: (sh, sw).
    pads: ((top, bottom), (left, right)); negative pads crop.
    dilation: (dh, dw).
    groups: feature groups.
    precision: of the contraction.

  Returns:
    (N, H', W', O) output.
  """
  n, _, _, c = x.shape
  (sh, sw), (dh, dw) = stride, dilation
  out_h, out_w, rows, cols, xp = _padded_taps(x, kernel.shape, stride, pads, dilation)
  if not rows or not cols:  # every tap reads padding: the conv is zero
    return jnp.zeros((n, out_h, out_w, kernel.shape[-1]), x.dtype)
  views = [
    lax.slice(
      xp,
      (0, a * dh, b * dw, 0),
      (n, a * dh + (out_h - 1) * sh + 1, b * dw + (out_w - 1) * sw + 1, c),
      (1, sh, sw, 1),
    )
    for a in rows
    for b in cols
  ]  # each (N, H', W', C)
  taps = jnp.stack([kernel[a, b] for a in rows for b in cols])  # (T, C / groups, O)
  return _patch_product(jnp.stack(views, axis=3), taps, groups, precision)


def _patch_product(
  patches: jax.Array, taps: jax.Array, groups: int, precision: lax.PrecisionLike
) -> jax.Array:
  """sum_{t, c} patches[n, i, j, t, c] * taps[t, c, o]: (N, H', W', T, C) x (T, C / groups, O)
  -> (N, H', W', O), the channels in `groups` feature groups."""
  n, out_h, out_w, t, c = patches.shape
  ci, co = taps.shape[1:]
  if groups == 1:
    y = jnp.matmul(
      patches.reshape(n * out_h * out_w, t * c), taps.reshape(t * c, co), precision=precision
    )
    return y.reshape(n, out_h, out_w, co)
  patches = patches.reshape(n, out_h, out_w, t, groups, ci)
  taps = taps.reshape(t, ci, groups, co // groups)
  y = jnp.einsum("nhwtgc,tcgo->nhwgo", patches, taps, precision=precision)
  return y.reshape(n, out_h, out_w, co)


def output_geometry(
  input_hw: Sequence[int],
  radius: int,
  stride: int | Sequence[int] = 1,
  padding: Padding = "SAME",
) -> tuple[tuple[int, int], tuple[int, int]]:
  """Output size and the input pixel under output (0, 0)'s kernel centre.

  The ACU output grid is that of a (2R + 1) x (2R + 1) conv with the same
  stride and padding: output (i, j) is centred on input
  (i * sh - top + R, j * sw - left + R).

  Args:
    input_hw: (H, W).
    radius: kernel radius R >= 1.
    stride: the conv stride.
    padding: as for `conv`.

  Returns:
    ((H', W'), (row0, col0)), the output size and the centre of output (0, 0).

  Raises:
    ValueError: if the output would be empty.
  """
  stride = _validation.pair("stride", stride)
  size = 2 * radius + 1
  (top, bottom), (left, right) = resolve_padding(padding, input_hw, (size, size), stride)
  h, w = input_hw
  out_h = (h + top + bottom - size) // stride[0] + 1
  out_w = (w + left + right - size) // stride[1] + 1
  if out_h < 1 or out_w < 1:
    raise ValueError(
      f"input {tuple(input_hw)} is too small for a {size}x{size} kernel with padding {padding!r}"
    )
  return (out_h, out_w), (radius - top, radius - left)


def active_conv_gather(
  x: ArrayLike,
  weights: ArrayLike,
  positions: ArrayLike,
  *,
  stride: int | Sequence[int] = 1,
  padding: Padding = "SAME",
  radius: int | None = None,
  modulation: ArrayLike | None = None,
  dtype: DTypeLike | None = None,
  precision: lax.PrecisionLike = None,
) -> jax.Array:
  """The literal ACU of eq. 5-9: bilinear samples at the synapses, then a sum.

  y[n, i, j, o] = sum_k sum_c w[k, c, o] * x_c(centre(i, j) + p_k), with
  bilinear interpolation over the cell of the lattice convention
  (`kernels.active.bilinear_cell`) and zeros outside the image. Positions
  are NOT clipped: a synapse may sample anywhere.

  Args:
    x: (N, H, W, C) input.
    weights: (K, C, O) synapse weights.
    positions: (dx, dy) in pixels from each output pixel's kernel centre, dx
      along columns: (K, 2) shared by the layer (the paper); (G, K, 2) one set
      per group of O / G output channels; or (N, H', W', K, 2) per output
      pixel (deformable-style, e.g. shared positions plus learned offsets).
    stride: the conv stride.
    padding: as for `conv`; with `radius` it fixes the output grid exactly
      as for a (2R + 1)^2 conv (see `output_geometry`).
    radius: R of that grid. None takes `kernels.radius_for_positions`, which
      needs concrete positions: pass it explicitly inside jit.
    modulation: optional (N, H', W', K) factor on each synapse's sample at
      each output pixel (the modulated deformable conv of DCNv2, Zhu et al.
      2019, eq. 3): y = sum_k m_k sum_c w[k, c, o] x_c(centre + p_k).
    dtype: compute dtype of the samples and the weighted sum, as for `conv`
      (positions and their cells stay at >= float32); by default x and the
      weights promoted, to float if both are integers.
    precision: of the weighted sum over synapses and channels, as for `conv`.

  Returns:
    (N, H', W', O) output, in `dtype` (by default x and the weights promoted).

  Raises:
    ValueError: on shapes that do not match, or radius None with traced
      positions.
  """
  n, h, w, c = _validation.require_rank("x", x, 4, "(N, H, W, C)")
  k, wc, cout = _validation.require_rank("weights", weights, 3, "(K, C, O)")
  if wc != c:
    raise ValueError(
      f"weights must be (K, C, O) with C = {c} input channels, got shape {(k, wc, cout)}"
    )
  p_shape = _validation.require_rank(
    "positions", positions, (2, 3, 5), "(K, 2), (G, K, 2) or (N, H', W', K, 2)"
  )
  if p_shape[-2:] != (k, 2):
    raise ValueError(f"positions must end in (K, 2) with K = {k} synapses, got shape {p_shape}")
  radius = (
    _active.radius_for_positions(positions) if radius is None else _active.check_radius(radius)
  )
  stride = _validation.pair("stride", stride)
  (out_h, out_w), (row0, col0) = output_geometry((h, w), radius, stride, padding)
  if len(p_shape) == 5 and p_shape[:3] != (n, out_h, out_w):
    raise ValueError(
      f"per-pixel positions must be (N, H', W', K, 2) = ({n}, {out_h}, {out_w}, {k}, 2), "
      f"got shape {p_shape}"
    )
  groups = p_shape[0] if len(p_shape) == 3 else 1
  if cout % groups:
    raise ValueError(f"{groups} position groups do not divide the {cout} output channels")

  # integer samples would round the bilinear weights to 0
  dtype = (
    _validation.floating(jnp.result_type(x, weights))
    if dtype is None
    else _validation.compute_dtype(dtype)
  )
  x = jnp.asarray(x, dtype)
  # Cells and fractions at >= float32 even for bf16 compute: a bf16 position
  # would move the synapse (1.3 -> 1.296875).
  p = jnp.asarray(positions, jnp.promote_types(x.dtype, jnp.float32))
  # Broadcast every layout to (N, H', W', G, K, 2).
  if len(p_shape) == 5:
    p = p[:, :, :, None]
  else:
    p = p.reshape(1, 1, 1, groups, k, 2)
  cx, fx = _active.bilinear_cell(p[..., 0])
  cy, fy = _active.bilinear_cell(p[..., 1])
  fx, fy = fx.astype(dtype), fy.astype(dtype)
  rows = (row0 + jnp.arange(out_h) * stride[0])[None, :, None, None, None]
  cols = (col0 + jnp.arange(out_w) * stride[1])[None, None, :, None, None]
  batch = jnp.arange(n)[:, None, None, None, None]

  def corner(dy: int, dx: int) -> jax.Array:
    r, q = rows + cy + dy, cols + cx + dx  # (.., H', W', G, K) int lattice points
    inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
    vals = x[batch, jnp.clip(r, 0, h - 1), jnp.clip(q, 0, w - 1)]
    return jnp.where(inside[..., None], vals, 0)  # (N, H', W', G, K, C)

  fx, fy = fx[..., None], fy[..., None]
  samples = (1 - fy) * ((1 - fx) * corner(0, 0) + fx * corner(0, 1)) + fy * (
    (1 - fx) * corner(1, 0) + fx * corner(1, 1)
  )
  if modulation is not None:
    _validation.require_shape("modulation", modulation, (n, out_h, out_w, k), "(N, H', W', K)")
    samples = samples * jnp.asarray(modulation, dtype)[:, :, :, None, :, None]
  wg = jnp.asarray(weights, dtype).reshape(k, c, groups, cout // groups)
  y = jnp.einsum("nhwgkc,kcgo->nhwgo", samples, wg, precision=_validation.precision(precision))
  return y.reshape(n, out_h, out_w, cout)
