"""The papers' closed-form derivatives, written out in NumPy (float64).

Nothing here uses JAX or autodiff: these are independent transcriptions of
the equations, against which `jax.grad` through the fast kernels and through
the gather reference is checked. They favour clarity over speed; use them on
small arrays.

- RotateConv, Ma et al. 2018: the kernel of eq. 3 / 8 from a hand-written
  direction table, and the weight and angle derivatives of eq. 5 (v4) and
  eq. 9 (v2).
- ACU, Jeon and Kim 2017: the forward of eq. 5-9 and the derivatives of
  eq. 10 (weights), 12-13 (positions) and 14 (input, chained through the
  bilinear weights of eq. 6).
- DCLS, Khalfaoui-Hassani et al. 2023: the dense kernel of `kernels.dcls_kernel` and its
  derivatives in the weights, the positions (the tent's derivative per element, or the
  Gaussian's) and the Gaussian's standard deviations, the normalization included.

Both follow the lattice conventions of the library: RotateConv's f is the
paper's (theta mod 45) / 45, so at multiples of 45 degrees f' = 1/45 on the
small side; the ACU cell is [l, l + 1] with l = floor(v) for v <= 0 and
ceil(v) - 1 for v > 0 (one-sided toward the centre at integers).
"""

from __future__ import annotations

import math

import numpy as np

# RotateConv directions, written out: angle in degrees -> (row, col) offset
# from the centre of the 3x3 kernel. Row grows downwards.
ROTATE_DIRECTIONS = {
  0: (0, 1),  # right
  45: (-1, 1),  # up-right
  90: (-1, 0),  # up
  135: (-1, -1),  # up-left
  180: (0, -1),  # left
  225: (1, -1),  # down-left
  270: (1, 0),  # down
  315: (1, 1),  # down-right
}


def _rotate_split(theta: float) -> tuple[float, int, int, int, int]:
  """f and the kernel cells (flat index) of w1 small/big and w2 small/big."""
  theta = math.fmod(theta, 180.0)
  if theta < 0:
    theta += 180.0
  if theta >= 180.0:
    theta -= 180.0
  small = 45 * math.floor(theta / 45.0)
  f = (theta - small) / 45.0

  def cell(angle: int) -> int:
    r, c = ROTATE_DIRECTIONS[angle % 360]
    return (1 + r) * 3 + (1 + c)

  return f, cell(small), cell(small + 45), cell(small + 180), cell(small + 225)


def rotate_kernel(weights: np.ndarray, angles: np.ndarray) -> np.ndarray:
  """Eq. 3 (v4, weights (3, I, O)) or eq. 8 (v2, weights (I, O)) -> (3, 3, I, O)."""
  weights = np.asarray(weights, np.float64)
  angles = np.asarray(angles, np.float64)
  v2 = weights.ndim == 2
  cin, cout = angles.shape
  kernel = np.zeros((9, cin, cout))
  for i in range(cin):
    for o in range(cout):
      w0, w1, w2 = (weights[i, o],) * 3 if v2 else weights[:, i, o]
      f, s1, b1, s2, b2 = _rotate_split(angles[i, o])
      kernel[4, i, o] += w0
      kernel[s1, i, o] += w1 * (1 - f)
      kernel[b1, i, o] += w1 * f
      kernel[s2, i, o] += w2 * (1 - f)
      kernel[b2, i, o] += w2 * f
  return kernel.reshape(3, 3, cin, cout)


def rotate_kernel_grads(
  weights: np.ndarray, angles: np.ndarray, kernel_grad: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Eq. 5 (v4) and eq. 9 (v2): d loss / d weights and d loss / d angles.

  Args:
    weights: (3, I, O) for v4 or (I, O) for v2.
    angles: (I, O) in degrees.
    kernel_grad: (3, 3, I, O), d loss / d (effective kernel), i.e. the
      Delta w_b, Delta w_s and Delta w_0 of the paper at their cells.

  Returns:
    (d weights, d angles) with the shapes of the inputs; d angles is per
    degree (f' = 1 / 45).
  """
  weights = np.asarray(weights, np.float64)
  angles = np.asarray(angles, np.float64)
  grad = np.asarray(kernel_grad, np.float64).reshape(9, *angles.shape)
  v2 = weights.ndim == 2
  dw = np.zeros_like(weights)
  dtheta = np.zeros_like(angles)
  cin, cout = angles.shape
  for i in range(cin):
    for o in range(cout):
      w0, w1, w2 = (weights[i, o],) * 3 if v2 else weights[:, i, o]
      f, s1, b1, s2, b2 = _rotate_split(angles[i, o])
      g = grad[:, i, o]
      d0 = g[4]
      d1 = g[b1] * f + g[s1] * (1 - f)
      d2 = g[b2] * f + g[s2] * (1 - f)
      fprime = 1.0 / 45.0
      dtheta[i, o] = w1 * (g[b1] - g[s1]) * fprime + w2 * (g[b2] - g[s2]) * fprime
      if v2:
        dw[i, o] = d1 + d2 + d0
      else:
        dw[:, i, o] = (d0, d1, d2)
  return dw, dtheta


def _cell(v: float) -> tuple[int, float]:
  low = math.ceil(v) - 1 if v > 0 else math.floor(v)
  return low, v - low


def _same_or_valid(size: int, kernel: int, stride: int, padding) -> tuple[int, int]:
  """(output size, low padding) along one axis."""
  if padding == "SAME":
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2
  if padding == "VALID":
    return (size - kernel) // stride + 1, 0
  lo, hi = padding
  return (size + lo + hi - kernel) // stride + 1, lo


def _active_geometry(x_shape, radius, stride, padding):
  _, h, w, _ = x_shape
  size = 2 * radius + 1
  if isinstance(padding, str):
    pad_h = pad_w = padding
  elif isinstance(padding, int):
    pad_h = pad_w = (padding, padding)
  else:
    pad_h, pad_w = padding
  out_h, top = _same_or_valid(h, size, stride, pad_h)
  out_w, left = _same_or_valid(w, size, stride, pad_w)
  rows = np.arange(out_h) * stride - top + radius
  cols = np.arange(out_w) * stride - left + radius
  return rows, cols


def _pixels(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """x[:, rows, cols, :] on the output grid, zero outside the image."""
  _, h, w, _ = x.shape
  r = rows[:, None]
  c = cols[None, :]
  inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
  vals = x[:, np.clip(r, 0, h - 1), np.clip(c, 0, w - 1), :]
  return vals * inside[None, :, :, None]


def _synapse(x, rows, cols, alpha, beta):
  """The neighbours Q^{ab} (eq. 9), the bilinear sample (eq. 6), fractions (eq. 7), cell."""
  lx, dx = _cell(alpha)  # alpha: horizontal, along columns (the paper's m)
  ly, dy = _cell(beta)  # beta: vertical, along rows (the paper's n)
  q11 = _pixels(x, rows + ly, cols + lx)
  q21 = _pixels(x, rows + ly, cols + lx + 1)
  q12 = _pixels(x, rows + ly + 1, cols + lx)
  q22 = _pixels(x, rows + ly + 1, cols + lx + 1)
  sample = q11 * (1 - dx) * (1 - dy) + q21 * dx * (1 - dy) + q12 * (1 - dx) * dy + q22 * dx * dy
  return (q11, q21, q12, q22), sample, (dx, dy), (lx, ly)


def active_conv(
  x: np.ndarray,
  weights: np.ndarray,
  positions: np.ndarray,
  *,
  stride: int = 1,
  padding="SAME",
  radius: int = 1,
) -> np.ndarray:
  """The ACU forward of eq. 5-9, shared positions (K, 2) = (alpha, beta).

  The output grid is that of a (2R + 1)^2 conv with this stride and padding
  ("SAME", "VALID", an int or ((t, b), (l, r))); zeros outside the image.
  """
  x = np.asarray(x, np.float64)
  weights = np.asarray(weights, np.float64)
  rows, cols = _active_geometry(x.shape, radius, stride, padding)
  y = 0.0
  for k, (alpha, beta) in enumerate(np.asarray(positions, np.float64)):
    _, sample, _, _ = _synapse(x, rows, cols, alpha, beta)
    y = y + np.einsum("nhwc,co->nhwo", sample, weights[k])
  return np.asarray(y)


def active_conv_grads(
  x: np.ndarray,
  weights: np.ndarray,
  positions: np.ndarray,
  out_grad: np.ndarray,
  *,
  stride: int = 1,
  padding="SAME",
  radius: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Eq. 10, 12-13 and 14: d loss / d (input, weights, positions).

  Args:
    x: (N, H, W, C) input.
    weights: (K, C, O).
    positions: (K, 2) as (alpha, beta) = (dx, dy).
    out_grad: (N, H', W', O), d loss / d y.
    stride, padding, radius: the output grid, as in `active_conv`.

  Returns:
    (dx, dw, dp) with the shapes of x, weights and positions.
  """
  x = np.asarray(x, np.float64)
  weights = np.asarray(weights, np.float64)
  g = np.asarray(out_grad, np.float64)
  rows, cols = _active_geometry(x.shape, radius, stride, padding)
  _, h, w, _ = x.shape
  dx_in = np.zeros_like(x)
  dw = np.zeros_like(weights)
  dp = np.zeros((len(weights), 2))
  for k, (alpha, beta) in enumerate(np.asarray(positions, np.float64)):
    (q11, q21, q12, q22), sample, (fx, fy), (lx, ly) = _synapse(x, rows, cols, alpha, beta)
    dw[k] = np.einsum("nhwc,nhwo->co", sample, g)  # eq. 10
    d_alpha = (1 - fy) * (q21 - q11) + fy * (q22 - q12)  # eq. 12, per channel
    d_beta = (1 - fx) * (q12 - q11) + fx * (q22 - q21)  # eq. 13, per channel
    dp[k, 0] = np.einsum("nhwc,co,nhwo->", d_alpha, weights[k], g)
    dp[k, 1] = np.einsum("nhwc,co,nhwo->", d_beta, weights[k], g)
    # Eq. 14: d y / d sample = w_k, then each sample's bilinear weights.
    d_sample = np.einsum("nhwo,co->nhwc", g, weights[k])
    for (oy, ox), bw in (
      ((0, 0), (1 - fx) * (1 - fy)),
      ((0, 1), fx * (1 - fy)),
      ((1, 0), (1 - fx) * fy),
      ((1, 1), fx * fy),
    ):
      r = (rows + ly + oy)[:, None] + 0 * cols[None, :]
      c = (cols + lx + ox)[None, :] + 0 * rows[:, None]
      inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
      for n in range(x.shape[0]):
        np.add.at(dx_in[n], (r[inside], c[inside]), bw * d_sample[n][inside])
  return dx_in, dw, dp


def deformable_conv(
  x: np.ndarray,
  weights: np.ndarray,
  positions: np.ndarray,
  modulation: np.ndarray | None = None,
  *,
  stride: int = 1,
  padding="SAME",
  radius: int = 1,
) -> np.ndarray:
  """The ACU forward with a position set per output pixel and an optional factor per synapse and
  pixel.

  y[n, i, j, o] = sum_k m[n, i, j, k] sum_c w[k, c, o] x_c(centre(i, j) + positions[n, i, j, k]),
  each sample bilinear over the cell of eq. 9 (as `active_conv`), zeros outside the image.

  Args:
    x: (N, H, W, C) input.
    weights: (K, C, O).
    positions: (N, H', W', K, 2) as (alpha, beta) = (dx, dy), on the grid of a (2R + 1)^2 conv.
    modulation: (N, H', W', K) or None (all ones).
    stride, padding, radius: the output grid, as in `active_conv`.
  """
  x = np.asarray(x, np.float64)
  weights = np.asarray(weights, np.float64)
  positions = np.asarray(positions, np.float64)
  n, h, w, _ = x.shape
  rows, cols = _active_geometry(x.shape, radius, stride, padding)
  batch = np.arange(n)[:, None, None]
  y = 0.0
  for k in range(weights.shape[0]):
    alpha, beta = positions[..., k, 0], positions[..., k, 1]
    lx = np.where(alpha > 0, np.ceil(alpha) - 1, np.floor(alpha)).astype(int)
    ly = np.where(beta > 0, np.ceil(beta) - 1, np.floor(beta)).astype(int)
    fx, fy = (alpha - lx)[..., None], (beta - ly)[..., None]
    sample: np.ndarray | float = 0.0
    for oy, ox, bw in (
      (0, 0, (1 - fx) * (1 - fy)),
      (0, 1, fx * (1 - fy)),
      (1, 0, (1 - fx) * fy),
      (1, 1, fx * fy),
    ):
      r = rows[None, :, None] + ly + oy
      c = cols[None, None, :] + lx + ox
      inside = ((r >= 0) & (r < h) & (c >= 0) & (c < w))[..., None]
      sample = sample + bw * inside * x[batch, np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)]
    if modulation is not None:
      sample = sample * np.asarray(modulation, np.float64)[..., k, None]
    y = y + np.einsum("nhwc,co->nhwo", sample, weights[k])
  return np.asarray(y)


def _dcls_axis(
  offsets: np.ndarray, size: int, interpolation: str, sigma: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """One axis of DCLS: t(u), dt / d offset and (Gaussian) dt / d sigma, each (size, ...), for
  u = cell - size // 2 - offset."""
  cells = (np.arange(size) - size // 2).reshape((size,) + (1,) * offsets.ndim)
  u = cells - offsets
  if interpolation == "bilinear":
    t = np.maximum(0.0, 1.0 - np.abs(u))
    # d/d offset of 1 - |u| is sign(u) inside the tent; 0 at its kinks u = 0 and |u| = 1
    dt = np.where((np.abs(u) < 1) & (u != 0), np.sign(u), 0.0)
    return t, dt, None
  assert sigma is not None
  t = np.exp(-(u**2) / (2 * sigma**2))
  return t, t * u / sigma**2, t * u**2 / sigma**3


def dcls_kernel(
  weights: np.ndarray,
  positions: np.ndarray,
  extent: tuple[int, int],
  interpolation: str = "bilinear",
  sigma: np.ndarray | None = None,
  eps: float = 1e-7,
) -> np.ndarray:
  """DCLS's dense kernel, (eh, ew, I, O): sum_k w_k t_y(r) t_x(c) / (S_y S_x + eps).

  Args:
    weights: (K, I, O); positions and sigma: (K, I, O, 2) as (x, y).
    extent: (eh, ew).
  """
  w = np.asarray(weights, np.float64)
  p = np.asarray(positions, np.float64)
  s = None if sigma is None else np.asarray(sigma, np.float64)
  tx, _, _ = _dcls_axis(p[..., 0], extent[1], interpolation, None if s is None else s[..., 0])
  ty, _, _ = _dcls_axis(p[..., 1], extent[0], interpolation, None if s is None else s[..., 1])
  norm = ty.sum(0) * tx.sum(0) + eps
  return np.einsum("rkio,ckio,kio->rcio", ty, tx, w / norm)


def dcls_kernel_grads(
  weights: np.ndarray,
  positions: np.ndarray,
  extent: tuple[int, int],
  cotangent: np.ndarray,
  interpolation: str = "bilinear",
  sigma: np.ndarray | None = None,
  eps: float = 1e-7,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """d loss / d (weights, positions, sigma) of `dcls_kernel`, given G = d loss / d kernel.

  With A = t_y(r) t_x(c), N = S_y S_x + eps and Q = sum_rc G A:
  d/dw = Q / N; d/dx = w / N sum_rc G t_y t_x' - w Q S_y S_x' / N^2 (t_x' = dt_x / dx,
  S_x' its sum), and alike for y and for each sigma with dt / d sigma in place of t'.

  Returns:
    (dw, dp, dsigma) with the shapes of weights, positions and sigma (None for "bilinear").
  """
  w = np.asarray(weights, np.float64)
  p = np.asarray(positions, np.float64)
  g = np.asarray(cotangent, np.float64)
  s = None if sigma is None else np.asarray(sigma, np.float64)
  tx, dtx, stx = _dcls_axis(p[..., 0], extent[1], interpolation, None if s is None else s[..., 0])
  ty, dty, sty = _dcls_axis(p[..., 1], extent[0], interpolation, None if s is None else s[..., 1])
  sx, sy = tx.sum(0), ty.sum(0)
  norm = sy * sx + eps
  q = np.einsum("rcio,rkio,ckio->kio", g, ty, tx)
  dw = q / norm

  def along_x(dt: np.ndarray) -> np.ndarray:
    return w / norm * np.einsum("rcio,rkio,ckio->kio", g, ty, dt) - w * q * sy * dt.sum(0) / norm**2

  def along_y(dt: np.ndarray) -> np.ndarray:
    return w / norm * np.einsum("rcio,rkio,ckio->kio", g, dt, tx) - w * q * sx * dt.sum(0) / norm**2

  dp = np.stack([along_x(dtx), along_y(dty)], axis=-1)
  if stx is None or sty is None:
    return dw, dp, None
  return dw, dp, np.stack([along_x(stx), along_y(sty)], axis=-1)
