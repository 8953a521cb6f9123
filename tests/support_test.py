"""The support matrix of the 'Your own model' guide is what kshapes_jax.support measures, and a
property test backs it: wherever convert accepts a conv, the converted layer keeps its function
and deploys to it."""

from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from flax import nnx

import kshapes_jax as K
from kshapes_jax import support

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "own-model.md"


def _guide_matrix() -> list[str]:
  text = GUIDE.read_text()
  start, end = "<!-- support-matrix:start -->\n", "\n<!-- support-matrix:end -->"
  return text[text.index(start) + len(start) : text.index(end)].split("\n")


def test_guide_matrix_has_the_header_and_a_row_per_kind():
  shown = _guide_matrix()
  assert "\n".join(shown[:2]) == support.header()
  assert [line.split(" | ")[0].removeprefix("| ") for line in shown[2:]] == list(K.nn.CONV_KINDS)


# one row in the default run (ACB's: int paddings and odd kernels refused), every row with -m slow
@pytest.mark.parametrize(
  "kind", [k if k == "acb" else pytest.param(k, marks=pytest.mark.slow) for k in K.nn.CONV_KINDS]
)
def test_guide_matrix_row_is_what_the_kind_does(kind):
  """Each cell converted, trained a step, deployed and exported for real (support.check)."""
  assert _guide_matrix()[2 + list(K.nn.CONV_KINDS).index(kind)] == support.row(kind)


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
  kind=st.sampled_from(sorted(K.nn.CONV_KINDS)),
  k=st.sampled_from([2, 3, 5]),
  stride=st.sampled_from([1, 2]),
  padding=st.sampled_from(["SAME", "VALID", 0, 1, 2, ((0, 1), (2, 1))]),
  dilation=st.sampled_from([1, 2]),
  groups=st.sampled_from([1, 2, 6]),
  bias=st.booleans(),
)
def test_whatever_converts_keeps_its_function_and_deploys_to_it(
  kind, k, stride, padding, dilation, groups, bias
):
  conv = nnx.Conv(
    6,
    6,
    (k, k),
    strides=stride,
    padding=padding,
    kernel_dilation=dilation,
    feature_group_count=groups,
    use_bias=bias,
    precision=jax.lax.Precision.HIGHEST,
    rngs=nnx.Rngs(0),
  )
  net = nnx.Sequential(conv)
  preserves = K.nn.get_kind(kind).preserves
  init = "fresh" if preserves is None else "preserve"
  try:
    model = K.convert(net, kind, init=init)
  except ValueError as e:
    assert str(e).startswith("layers/0: "), e  # a refusal names the layer
    return
  x = jax.numpy.asarray(np.random.default_rng(k).normal(size=(2, 11, 11, 6)), np.float32)
  model.eval()
  forward = nnx.jit(lambda m, x: m(x))  # one program per network, not one per op
  y = forward(model, x)
  assert y.shape == forward(net, x).shape
  if preserves == "exact":
    np.testing.assert_allclose(y, forward(net, x), rtol=1e-5, atol=1e-5)
  for to in ("kshapes", "flax"):
    np.testing.assert_allclose(forward(K.deploy(model, to=to), x), y, rtol=1e-5, atol=1e-5)
