"""The precision policy, read off the jaxprs: exact kernel builders, `precision` and `dtype`
everywhere.

A CPU computes float32 convolutions and matmuls in float32 whatever their
precision says, so CI cannot see the TF32 rounding a GPU applies at DEFAULT
precision. What it can see is the precision each contraction asks for: these
tests walk the jaxprs (forward and gradient) and check it.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import kshapes_jax as K
from kshapes_jax import gradients, kernels
from kshapes_jax.kernels import BatchNormParams

CONTRACTIONS = ("dot_general", "conv_general_dilated")
EXACT = (
  lax.Precision.HIGHEST,
  lax.DotAlgorithmPreset.F32_F32_F32,
  lax.DotAlgorithmPreset.F64_F64_F64,
)


def _sub_jaxprs(value):
  if hasattr(value, "eqns"):  # Jaxpr
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):  # ClosedJaxpr
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def contractions(jaxpr):
  """Every dot_general / conv_general_dilated in a (closed) jaxpr and its sub-jaxprs:
  (name, operand dtypes, precision)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in CONTRACTIONS:
      yield eqn.primitive.name, tuple(v.aval.dtype for v in eqn.invars), eqn.params["precision"]
    for param in eqn.params.values():
      for sub in _sub_jaxprs(param):
        yield from contractions(sub)


def _exact(precision) -> bool:
  if isinstance(precision, tuple):
    return all(p in EXACT for p in precision)
  return precision in EXACT


def inexact_float32(jaxpr) -> list:
  """The float32 contractions that a GPU would run at TF32 (or a TPU in bf16 passes)."""
  return [
    c for c in contractions(jaxpr) if any(d == jnp.float32 for d in c[1]) and not _exact(c[2])
  ]


def _value_and_grad_jaxprs(fn, args):
  """jaxprs of fn(*args) and of the gradient of <fn(*args), random> w.r.t. every float arg."""
  floats = [i for i, a in enumerate(args) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)]

  def scalar(*float_args):
    full = list(args)
    for i, a in zip(floats, float_args):
      full[i] = a
    out = jax.tree.leaves(fn(*full))
    return sum(
      jnp.sum(o * jnp.cos(jnp.arange(o.size, dtype=o.dtype).reshape(o.shape))) for o in out
    )

  float_args = [args[i] for i in floats]
  forward = jax.make_jaxpr(fn)(*args)
  backward = jax.make_jaxpr(jax.grad(scalar, argnums=tuple(range(len(floats)))))(*float_args)
  return forward, backward


def _f32(rng, *shape, low=None, high=None):
  if low is not None:
    return jnp.asarray(rng.uniform(low, high, shape), jnp.float32)
  return jnp.asarray(rng.normal(size=shape), jnp.float32)


def _bn(rng, o):
  return BatchNormParams(_f32(rng, o), _f32(rng, o), _f32(rng, o), _f32(rng, o, low=0.5, high=1.5))


def _builder_cases(rng):
  """name -> (function, args) for every array function of kernels/, plus the ACU gradient rule."""
  i, o, k = 4, 6, 9
  return {
    "rotate_kernel": [
      (kernels.rotate_kernel, (_f32(rng, 3, i, o), _f32(rng, i, o, low=-200, high=200))),
      (kernels.rotate_kernel, (_f32(rng, i, o), _f32(rng, i, o, low=0, high=180))),
    ],
    "wrap_angles": [(kernels.wrap_angles, (_f32(rng, i, o, low=-400, high=400),))],
    "with_origin": [(kernels.with_origin, (_f32(rng, k - 1, 2, low=-2, high=2),))],
    "project_angles": [
      (
        lambda u, p: kernels.project_angles(u, p, 1.0),
        (_f32(rng, i, o, low=0, high=180), _f32(rng, i, o, low=0, high=180)),
      )
    ],
    "fuse_bn": [(kernels.fuse_bn, (_f32(rng, 3, 3, i, o), *_bn(rng, o)))],
    "acb_kernel": [
      (kernels.acb_kernel, (_f32(rng, 3, 3, i, o), _f32(rng, 1, 3, i, o), _f32(rng, 3, 1, i, o)))
    ],
    "fuse_acb": [
      (
        lambda s, h, v, *bns: kernels.fuse_acb(
          s, BatchNormParams(*bns[:4]), h, BatchNormParams(*bns[4:8]), v, BatchNormParams(*bns[8:])
        ),
        (
          _f32(rng, 3, 3, i, o),
          _f32(rng, 1, 3, i, o),
          _f32(rng, 3, 1, i, o),
          *_bn(rng, o),
          *_bn(rng, o),
          *_bn(rng, o),
        ),
      )
    ],
    "add_branches": [
      (
        lambda a, b, c: kernels.add_branches([a, b], [c, None]),
        (_f32(rng, 3, 3, i, o), _f32(rng, 3, 3, i, o), _f32(rng, o)),
      )
    ],
    "fuse_1x1_kxk": [
      (
        lambda a, b, c, d: kernels.fuse_1x1_kxk(a, b, c, d, groups=2),
        (_f32(rng, 1, 1, i, 8), _f32(rng, 8), _f32(rng, 3, 3, 4, o), _f32(rng, o)),
      )
    ],
    "fuse_1x1_avg": [(lambda a: kernels.fuse_1x1_avg(a, 3), (_f32(rng, 1, 1, i, o),))],
    "concat_depth": [
      (
        lambda a, b, c, d: kernels.concat_depth([a, b], [c, d]),
        (_f32(rng, 3, 3, i, o), _f32(rng, 3, 3, i, 2), _f32(rng, o), _f32(rng, 2)),
      )
    ],
    "avg_pool_kernel": [(lambda: kernels.avg_pool_kernel(o, 3, 2), ())],
    "identity_kernel": [(lambda: kernels.identity_kernel(o, 3, 3), ())],
    "pad_kernel": [(lambda k: kernels.pad_kernel(k, 5), (_f32(rng, 1, 3, i, o),))],
    "scale_output": [(kernels.scale_output, (_f32(rng, 3, 3, i, o), _f32(rng, o)))],
    "spatial_versatile_kernel": [(kernels.spatial_versatile_kernel, (_f32(rng, 5, 5, i, o),))],
    "channel_versatile_kernel": [
      (lambda f: kernels.channel_versatile_kernel(f, 8, 2), (_f32(rng, 3, 3, i, o),))
    ],
    "spatial_channel_versatile_kernel": [
      (lambda f: kernels.spatial_channel_versatile_kernel(f, 8, 2), (_f32(rng, 3, 3, i, o),))
    ],
    "summed_versatile_kernel": [(kernels.summed_versatile_kernel, (_f32(rng, 5, 5, i, o),))],
    "active_kernel": [
      (
        lambda w, p: kernels.active_kernel(w, p, 2),
        (_f32(rng, k, i, o), _f32(rng, k, 2, low=-2, high=2)),
      ),
      (
        lambda w, p: kernels.active_kernel(w, p, 2),
        (_f32(rng, k, i, o), _f32(rng, 3, k, 2, low=-2, high=2)),
      ),
    ],
    "bilinear_cell": [(kernels.bilinear_cell, (_f32(rng, k, 2, low=-2, high=2),))],
    "clip_positions": [
      (lambda p: kernels.clip_positions(p, 1), (_f32(rng, k, 2, low=-2, high=2),))
    ],
    "lattice_positions": [(lambda: kernels.lattice_positions(5, 1.5), ())],
    "versatile_masks": [(lambda: kernels.versatile_masks(5), ())],
    "normalize_angle_grad": [
      (
        lambda w, a: kernels.rotate_kernel(w, gradients.normalize_angle_grad(a)),
        (_f32(rng, 3, i, o), _f32(rng, i, o, low=0, high=180)),
      )
    ],
    "dcls_kernel": [
      (
        lambda w, p: kernels.dcls_kernel(w, p, 7),
        (_f32(rng, k, i, o), _f32(rng, k, i, o, 2, low=-3, high=3)),
      ),
      (
        lambda w, p, s: kernels.dcls_kernel(w, p, (5, 7), "gauss", s),
        (
          _f32(rng, k, i, o),
          _f32(rng, k, i, o, 2, low=-2, high=2),
          _f32(rng, k, i, o, 2, low=0.3, high=1.5),
        ),
      ),
    ],
    "normalize_position_grad": [
      (
        lambda w, p: kernels.active_kernel(w, gradients.normalize_position_grad(p), 2),
        (_f32(rng, k, i, o), _f32(rng, k, 2, low=-2, high=2)),
      )
    ],
  }


# kernels.__all__ entries that are not array functions, with the reason
NOT_BUILDERS = {
  "BatchNormParams": "a NamedTuple",
  "channel_windows": "int arithmetic on the host",
  "check_positions_within": "a host-side check",
  "check_radius": "a host-side check",
  "dcls_lattice": "NumPy constants",
  "lattice_offsets": "NumPy constants",
  "radius_for_positions": "a host-side int",
}


def test_the_builder_cases_cover_every_public_kernel_function(rng):
  cases = set(_builder_cases(rng)) - {"normalize_position_grad", "normalize_angle_grad"}
  assert cases | set(NOT_BUILDERS) == set(kernels.__all__), (
    "a new kernels/ function needs a case in _builder_cases (or a reason in NOT_BUILDERS)"
  )
  assert not cases & set(NOT_BUILDERS)


@pytest.mark.parametrize("name", sorted(_builder_cases(np.random.default_rng(0))))
def test_kernel_builders_are_exact_on_every_backend_value_and_gradient(rng, name):
  for fn, args in _builder_cases(rng)[name]:
    if not args:
      assert inexact_float32(jax.make_jaxpr(fn)()) == []
      continue
    forward, backward = _value_and_grad_jaxprs(fn, args)
    assert inexact_float32(forward) == [], f"{name} forward"
    assert inexact_float32(backward) == [], f"{name} gradient"


def test_the_audit_catches_a_default_precision_contraction(rng):
  """The negative control: the check above can fail."""
  a, b = _f32(rng, 4, 5), _f32(rng, 5, 3)
  forward, backward = _value_and_grad_jaxprs(lambda a, b: jnp.einsum("ij,jk->ik", a, b), (a, b))
  # the gradient's jaxpr holds the forward product and its two transposes
  assert len(inexact_float32(forward)) == 1 and len(inexact_float32(backward)) == 3
  exact = lambda a, b: jnp.einsum("ij,jk->ik", a, b, precision="highest")
  assert inexact_float32(jax.make_jaxpr(exact)(a, b)) == []
  x = _f32(rng, 1, 6, 6, 5)
  # one conv per platform branch: the CPU one (its kernel gradient as matmuls) and the default
  found = inexact_float32(jax.make_jaxpr(lambda x, k: K.conv.conv(x, k))(x, _f32(rng, 3, 3, 5, 2)))
  assert len(found) == 2


def _abstract_model(name, kind, **kw):
  model = K.models.abstract(name, conv=kind, **kw)
  spec = K.models.spec(name)
  return model, jax.ShapeDtypeStruct((2, *spec.input_shape), jnp.float32)


def _forward_jaxpr(model, x, train):
  model.train() if train else model.eval()
  graphdef, state = nnx.split(model)
  return jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)


# Every kind in one model, and every model file's plumbing with its plain and one shaped kind.
def _paper_kind(name: str) -> str:
  return [k for k in K.models.spec(name).kinds if k not in ("dbb", "repvgg")][-1]


MODEL_KINDS = sorted(
  {("resnet20", kind) for kind in K.nn.CONV_KINDS}
  | {
    (name, kind)
    for name in (
      "sn",
      "lenet",
      "cifar_quick",
      "acu_plain",
      "preact_resnet32",
      "densenet40",
      "vgg16",
      "resnet18",
      "alexnet",
    )
    # each model's paper kind: the last of the four papers' kinds that applies to it
    for kind in ("plain", _paper_kind(name))
  }
)


def _computes_in(found, dtype) -> bool:
  """Every conv, and every matmul that is not an exact float32 kernel builder, computes in dtype."""
  return all(
    all(d == dtype for d in dtypes)
    for name, dtypes, p in found
    if name == "conv_general_dilated" or not _exact(p) or jnp.float32 not in dtypes
  )


@pytest.mark.parametrize("name, kind", MODEL_KINDS)
def test_precision_and_dtype_reach_every_layer_of_every_model(name, kind):
  model, x = _abstract_model(name, kind, precision="highest", dtype="bfloat16")
  found = list(contractions(_forward_jaxpr(model, x, train=True)))
  assert found
  assert all(_exact(p) for _, _, p in found), (
    f"a conv or dense layer of {name}/{kind} ignores precision"
  )
  assert _computes_in(found, jnp.bfloat16), (
    f"a conv or dense layer of {name}/{kind} does not compute in bfloat16"
  )
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in params)  # mixed precision: float32 parameters
  found = list(contractions(_forward_jaxpr(model, x, train=False)))  # ACBlock's fused path
  assert found and all(_exact(p) for _, _, p in found) and _computes_in(found, jnp.bfloat16)


@pytest.mark.parametrize("kind", sorted(K.nn.CONV_KINDS))
def test_the_deployed_model_keeps_the_policy(kind):
  model = K.models.create("acu_plain", conv=kind, precision="highest", dtype="bfloat16", width=0.25)
  deployed = K.deploy(model)
  found = list(
    contractions(_forward_jaxpr(deployed, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32), False))
  )
  assert found and all(_exact(p) for _, _, p in found) and _computes_in(found, jnp.bfloat16)


def test_by_default_the_convs_run_at_the_backends_precision():
  model, x = _abstract_model("resnet20", "rotate4")
  found = list(contractions(_forward_jaxpr(model, x, train=True)))
  assert all(p is None for _, _, p in found)


@pytest.mark.parametrize("impl", ["splat", "gather"])
def test_the_gradient_keeps_the_precision(rng, impl):
  layer = K.nn.ActiveConv(4, 6, rngs=nnx.Rngs(0), impl=impl, precision="highest")
  x = _f32(rng, 2, 8, 8, 4)
  graphdef, params = nnx.split(layer)
  loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x)
  found = list(contractions(jaxpr))
  assert len(found) >= 3 and all(_exact(p) for _, _, p in found)


@pytest.mark.parametrize("bad", ["tf32", 3, "bfloat17"])
def test_unknown_precision_or_dtype_is_a_clear_error(bad):
  with pytest.raises(ValueError, match="precision must be"):
    K.models.create("sn", precision=bad)
  if bad != "tf32":
    with pytest.raises(ValueError, match="dtype must be"):
      K.nn.PlainConv(2, 3, rngs=nnx.Rngs(0), dtype=bad)


@pytest.mark.parametrize("kind", sorted(K.nn.CONV_KINDS))
def test_mixed_precision_layers_follow_their_float32_twin(rng, kind):
  """bf16 compute, float32 parameters: the outputs are bf16 and close to the float32 layer's."""
  options = {"impl": "gather"} if kind == "active" else {}
  make = lambda dtype: K.nn.conv_bn(
    kind, 8, 16, 3, rngs=nnx.Rngs(0), dtype=dtype, precision="highest", **options
  )
  x = _f32(rng, 2, 10, 10, 8)
  full, half = make(None), make("bfloat16")
  y32, y16 = full(x), half(x)
  assert y16.dtype == jnp.bfloat16 and y32.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(y32)))
  # bf16 keeps 8 significant bits: a relative error of a few 2^-8 after a conv and a BN
  assert float(jnp.max(jnp.abs(y16.astype(jnp.float32) - y32))) < 0.05 * scale
  grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32) ** 2))(half)
  assert all(
    g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)
  )
  assert math.isfinite(float(jnp.sum(y16.astype(jnp.float32))))


def test_lax_precision_names_and_pairs_are_accepted(rng):
  from kshapes_jax import _validation

  assert _validation.precision("float32") == lax.Precision.HIGHEST
  assert _validation.precision("tensorfloat32") == lax.Precision.HIGH
  assert _validation.precision(("highest", "default")) == (
    lax.Precision.HIGHEST,
    lax.Precision.DEFAULT,
  )
  x, k = _f32(rng, 1, 6, 6, 5), _f32(rng, 3, 3, 5, 2)
  found = list(
    contractions(
      jax.make_jaxpr(lambda x, k: K.conv.conv(x, k, precision=("highest", "highest")))(x, k)
    )
  )
  # one conv per platform branch (CPU's, with its matmul kernel gradient, and the default)
  assert [p for _, _, p in found] == [(lax.Precision.HIGHEST, lax.Precision.HIGHEST)] * 2
