"""The papers' optimizer rules as optax transforms driven by parameter labels.

Every learned parameter gets one label (`param_labels`):

- `weights`: conv kernels, RotateConv line weights, ACU synapse weights,
  classifier matrices;
- `bias`: biases of convs and classifiers;
- `bn`: scale and shift of normalisation layers;
- `angles`: RotateConv angles (`nn.Angle`), projected after each update
  (eq. 6 of Ma et al.);
- `positions`: ACU synapse positions (`nn.Position`), with their own learning
  rate multiplier (0.01 in Jeon and Kim, section 3.1) and frozen for a
  warm-up number of steps (section 2.6);
- `scales`: the online form's branch scales of the multi-branch kinds
  (`nn.BranchScale`, Hu et al.'s OREPA), which take the branch BNs' place:
  not decayed by default, as BN scales are not.
- `dcls_positions`, `dcls_sigmas`: DCLS element positions and Gaussian
  standard deviations (`nn.DclsPosition`, `nn.DclsSigma`), at 5 x the base
  rate and not decayed (the official ConvNeXt-dcls recipe), the positions
  clamped into their window after every step (`clamp_to_bounds`).

A shape parameter class sets its label's default learning-rate multiplier
(`default_lr_multipliers`) and may carry a `bound` (`param_bounds`).

The ACU's normalized position gradient (eq. 15-16) lives in the layer
(`ActiveConv(normalize_grad=True)`, a custom VJP where the positions enter
the kernel), so it holds whichever optimizer a user picks. Synapse 0 is not
a parameter at all, so no optimizer can move it.

`with_shape_rules(base, labels, ...)` puts the rules around ANY optax
optimizer: freeze positions -> weight decay (masked) -> the base optimizer
-> per-label multiplier -> angle projection -> clamp to bounds. `sgd(...)` (the papers') and
`adamw(...)` are two instances of it.

References:
  Ma et al., "RotateConv: Making Asymmetric Convolutional Kernels Rotatable",
  ICPR 2018, eq. 6. Jeon and Kim, "Active Convolution", CVPR 2017,
  sections 2.5-2.6 and 3.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from kshapes_jax.kernels import project_angles
from kshapes_jax.nn.variables import ShapeParam, labelled_shape_params, shape_labels

Schedule = Literal["constant", "staircase", "cosine"]

# the labels of the built-in layers (a kind's own shape parameters add theirs: `known_labels`)
LABELS = (
  "weights",
  "bias",
  "bn",
  "angles",
  "positions",
  "scales",
  "dcls_positions",
  "dcls_sigmas",
)
# Normalisation layers whose parameters get the "bn" label.
_NORM_TYPES = (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)


def param_labels(model: nnx.Module) -> nnx.State:
  """One label per learned parameter, in the structure of `nnx.state(model, nnx.Param)`.

  Args:
    model: any NNX module.

  Returns:
    An nnx.State shaped like the model's `nnx.Param` state whose leaves are
    label strings (see the module docstring), usable by `optax.multi_transform`
    and by the transforms here.
  """
  norm_paths = {path for path, m in nnx.iter_modules(model) if isinstance(m, _NORM_TYPES)}
  params = nnx.state(model, nnx.Param)

  def label(path, var: nnx.Variable) -> str:
    names = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
    if isinstance(var, ShapeParam):  # angles, positions, a kind's own: its class says
      return type(var).label
    if names[:-1] in norm_paths:
      return "bn"
    if names[-1] == "bias":
      return "bias"
    return "weights"

  return jax.tree_util.tree_map_with_path(
    lambda path, var: jax.tree.map(lambda _: label(path, var), var),
    params,
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )


def default_lr_multipliers() -> dict[str, float]:
  """The learning-rate multiplier of every shape parameter label whose class sets one other than
  1: {"positions": 0.01} (the ACU, section 3.1), DCLS's 5 x, and those of kinds defined since."""
  return {
    label: float(cls.lr_multiplier)
    for label, cls in labelled_shape_params().items()
    if cls.lr_multiplier != 1.0
  }


def leafwise(fn: Callable[..., Any], tree: Any, *others: Any) -> Any:
  """`fn(leaf, *the others' leaves)` over the leaves of `tree`, in its structure.

  The other trees (labels from `param_labels`, bounds from `param_bounds`, the params) are
  matched leaf by leaf, in order, not node by node: a state may hold its arrays inside
  `nnx.Param`s (`nnx.state(model, nnx.Param)`) or bare (what `nnx.Optimizer` hands to optax),
  and the rules read both alike.

  Raises:
    ValueError: when the trees hold different numbers of leaves (another model's labels).
  """
  leaves, treedef = jax.tree.flatten(tree)
  other_leaves = [jax.tree.leaves(other) for other in others]
  for other in other_leaves:
    if len(other) != len(leaves):
      raise ValueError(
        f"the labels (or bounds) hold {len(other)} parameters, the updates {len(leaves)}: make "
        "them with optim.param_labels (param_bounds) of the model being trained"
      )
  return jax.tree.unflatten(treedef, [fn(*xs) for xs in zip(leaves, *other_leaves, strict=True)])


def param_bounds(model: nnx.Module) -> nnx.State:
  """Each parameter's `bound` metadata (a DCLS position's window half-size), inf where it has
  none, in the structure of `param_labels(model)`: the tree `clamp_to_bounds` takes."""
  params = nnx.state(model, nnx.Param)
  return jax.tree.map(
    lambda var: jax.tree.map(lambda _: float(getattr(var, "bound", math.inf)), var),
    params,
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )


def has_bounds(bounds: Any) -> bool:
  """Whether some parameter in a `param_bounds` tree has a finite bound."""
  return any(b != math.inf for b in jax.tree.leaves(bounds))


def clamp_to_bounds(bounds: Any) -> optax.GradientTransformation:
  """Makes every bounded parameter's step land in [-bound, bound]: the official DCLS
  `clamp_parameters` after each optimizer step.

  Put it LAST in the chain: it returns `clip(p + u, -b, b) - p`, so `optax.apply_updates`
  lands on the clamped value (to float rounding).

  Args:
    bounds: the tree from `param_bounds` (inf: unbounded).
  """

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("clamp_to_bounds needs the current params: call update(g, state, params)")

    def one(u, p, b):
      return u if b == math.inf else jnp.clip(p + u, -b, b) - p

    return leafwise(one, updates, params, bounds), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def known_labels() -> tuple[str, ...]:
  """Every label `param_labels` gives: weights, bias, bn and each shape parameter type's
  (`kshapes_jax.nn.ShapeParam`: angles, positions, and those of kinds defined since)."""
  return ("weights", "bias", "bn", *shape_labels())


def check_labels(labels: Any, what: str) -> None:
  """ValueError, naming `what`, for a label `param_labels` never gives."""
  known = known_labels()
  for name in labels:
    if name not in known:
      raise ValueError(f"{what}: unknown parameter label {name!r}; expected some of {list(known)}")


def check_boundaries(boundaries: Sequence[float]) -> None:
  """ValueError unless the staircase's boundaries (steps, or epochs) are positive, finite and
  increasing."""
  values = list(boundaries)
  ok = all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in values)
  if not ok or any(not b > 0 or b == float("inf") for b in values) or values != sorted(values):
    raise ValueError(f"schedule boundaries must be positive and increasing, got {tuple(values)}")


class FreezeState(NamedTuple):
  # the name shadows tuple.count; it is the checkpointed state's key, so it stays
  count: jax.Array  # type: ignore[assignment]


def freeze(labels: Any, frozen: Sequence[str], steps: int) -> optax.GradientTransformation:
  """Zeroes the updates of parameters with the given labels for the first `steps` steps.

  The ACU warm-up (Jeon and Kim, section 2.6): positions stay where they were
  initialised while the weights settle. Put it first in the chain, so that
  momentum does not accumulate the frozen gradients either.

  Args:
    labels: the tree from `param_labels`.
    frozen: labels to freeze, e.g. ("positions",).
    steps: how many updates are frozen (0: none).
  """
  check_labels(frozen, "freeze")
  if steps < 0:
    raise ValueError(f"freeze steps must be >= 0, got {steps}")
  frozen = tuple(frozen)

  def init(params):
    del params
    return FreezeState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    live = state.count >= steps
    updates = leafwise(
      lambda u, lab: jnp.where(live, u, jnp.zeros_like(u)) if lab in frozen else u, updates, labels
    )
    return updates, FreezeState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


def scale_by_label(labels: Any, multipliers: Mapping[str, float]) -> optax.GradientTransformation:
  """Multiplies the updates of each label by its multiplier (1 where none is given).

  The ACU positions learn at 0.01 times the base rate and follow its
  schedule (Jeon and Kim, section 3.1): `scale_by_label(labels, {"positions": 0.01})`
  after the learning-rate scaling.
  """
  check_labels(multipliers, "lr multipliers")
  for label, value in multipliers.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e300:
      raise ValueError(f"lr multipliers: {label}'s must be a finite number >= 0, got {value!r}")
  multipliers = {k: float(v) for k, v in multipliers.items()}

  def update(updates, state, params=None):
    del params
    return leafwise(lambda u, lab: u * multipliers.get(lab, 1.0), updates, labels), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def project_angle_updates(labels: Any, eps: float) -> optax.GradientTransformation:
  """Makes the step of every `angles` parameter land where eq. 6 allows.

  RotateConv eq. 6: theta_new = (theta_last + delta) mod 180, kept within
  eps degrees of the 45-degree sector that held theta_last. Put it LAST in
  the chain: it needs the final update; it returns the update
  `project(theta + u, theta) - theta`, so `optax.apply_updates` lands on the
  projected angle (to float rounding).

  Args:
    labels: the tree from `param_labels`.
    eps: degrees an angle may leave its previous sector by, per step (>= 0).
  """
  if not eps >= 0:
    raise ValueError(f"angle eps must be >= 0 degrees, got {eps!r}")

  def update(updates, state, params=None):
    if params is None:
      raise ValueError(
        "project_angle_updates needs the current params: call update(g, state, params)"
      )

    def one(u, p, lab):
      if lab != "angles":
        return u
      return project_angles(p + u, p, eps) - p

    return leafwise(one, updates, params, labels), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_schedule(
  kind: Schedule,
  base_lr: float,
  total_steps: int,
  *,
  boundaries: Sequence[int] = (),
  factor: float = 0.1,
  warmup_steps: int = 0,
  end_lr: float = 0.0,
) -> optax.Schedule:
  """Learning-rate schedules of the papers.

  Args:
    kind: "constant"; "staircase" (multiply by `factor` at each boundary
      step: 0.1 -> 0.01 -> 0.001 ..., ACNet section 4.1, ACU section 3.1);
      "cosine" (from base_lr to end_lr over total_steps).
    base_lr: the initial learning rate.
    total_steps: length of training in steps.
    boundaries: steps at which the staircase drops, increasing; counted from step 0, the
      warm-up included (a drop inside the warm-up applies from its end).
    factor: the staircase's multiplier.
    warmup_steps: optional linear ramp from 0 over the first steps; the schedule after it
      keeps its own steps (a cosine spans the steps after the ramp).
    end_lr: the cosine's final rate.
  """
  if not 0 < base_lr < float("inf"):
    raise ValueError(f"learning rate must be > 0 and finite, got {base_lr}")
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}")
  boundaries = [int(b) for b in boundaries]
  check_boundaries(boundaries)
  if kind == "constant":
    schedule = optax.constant_schedule(base_lr)
  elif kind == "staircase":
    # join_schedules counts the schedule after the ramp from 0: its drops move back by the ramp
    drops: dict[int, float] = {}
    for b in boundaries:
      drops[max(b - warmup_steps, 0)] = drops.get(max(b - warmup_steps, 0), 1.0) * factor
    schedule = optax.piecewise_constant_schedule(base_lr, drops)
  elif kind == "cosine":
    schedule = optax.cosine_decay_schedule(
      base_lr, max(total_steps - warmup_steps, 1), alpha=end_lr / base_lr
    )
  else:
    raise ValueError(f"schedule must be 'constant', 'staircase' or 'cosine', got {kind!r}")
  if warmup_steps:
    ramp = optax.linear_schedule(0.0, base_lr, warmup_steps)
    schedule = optax.join_schedules([ramp, schedule], [warmup_steps])
  return schedule


def with_shape_rules(
  base: optax.GradientTransformation | Sequence[optax.GradientTransformation],
  labels: Any,
  *,
  weight_decay: float = 0.0,
  decay_labels: Sequence[str] = ("weights",),
  lr_multipliers: Mapping[str, float] | None = None,
  frozen_labels: Sequence[str] = ("positions",),
  freeze_steps: int = 0,
  angle_eps: float | None = 1.0,
  bounds: Any = None,
) -> optax.GradientTransformation:
  """Any optax optimizer with the papers' per-label rules around it.

  The chain: freeze (ACU warm-up, first, so the base's moments never see the
  frozen gradients) -> L2 weight decay added to the gradient, masked to
  `decay_labels` -> `base` (which applies its own learning rate) -> per-label
  multipliers (ACU positions at 0.01 x the base's step) -> eq. 6's angle
  projection -> the clamp to `bounds` (these two need the final update).

  Args:
    base: the optimizer, e.g. `optax.adamw(schedule, weight_decay=1e-4, mask=...)`
      or `optax.lamb(1e-3)`; a sequence of transforms is spliced into the
      chain as they are (what `sgd` does, so its state keeps one flat layout).
    labels: the tree from `param_labels(model)`.
    weight_decay: coupled L2 coefficient (Caffe / PyTorch SGD); leave it 0
      for an optimizer with its own decoupled decay (AdamW), and mask that
      one with `decay_mask(labels)`.
    decay_labels: labels that decay; by default only `weights`, so BN,
      biases, angles and positions do not.
    lr_multipliers: per-label multipliers of the base's update, default
      `default_lr_multipliers()` ({"positions": 0.01, "dcls_positions": 5.0, ...}).
    frozen_labels, freeze_steps: labels whose updates are zero for the first
      freeze_steps steps (the ACU warm-up).
    angle_eps: eq. 6's eps in degrees; None turns the projection off.
    bounds: `param_bounds(model)`, for a model with bounded parameters (DCLS positions); None
      or no finite bound adds no clamp (and no state).
  """
  check_labels(decay_labels, "weight decay")
  if not 0 <= weight_decay < float("inf"):
    raise ValueError(f"weight_decay must be >= 0 and finite, got {weight_decay}")
  lr_multipliers = default_lr_multipliers() if lr_multipliers is None else dict(lr_multipliers)
  parts = [freeze(labels, frozen_labels, freeze_steps)]
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask(labels, decay_labels)))
  parts.extend([base] if isinstance(base, optax.GradientTransformation) else base)
  parts.append(scale_by_label(labels, lr_multipliers))
  if angle_eps is not None:
    parts.append(project_angle_updates(labels, angle_eps))
  if bounds is not None and has_bounds(bounds):
    parts.append(clamp_to_bounds(bounds))
  return optax.chain(*parts)


def decay_mask(labels: Any, decay_labels: Sequence[str] = ("weights",)) -> Callable[[Any], Any]:
  """The `mask` of optax's weight decay: params -> True where a parameter's label decays, in the
  params' own structure (`leafwise`: a state of nnx.Params or of bare arrays alike)."""
  check_labels(decay_labels, "weight decay")
  decays = tuple(decay_labels)
  return lambda params: leafwise(lambda _, lab: lab in decays, params, labels)


def sgd(
  labels: Any,
  learning_rate: float | optax.Schedule,
  *,
  momentum: float = 0.9,
  nesterov: bool = False,
  weight_decay: float = 0.0,
  decay_labels: Sequence[str] = ("weights",),
  lr_multipliers: Mapping[str, float] | None = None,
  frozen_labels: Sequence[str] = ("positions",),
  freeze_steps: int = 0,
  angle_eps: float | None = 1.0,
  bounds: Any = None,
) -> optax.GradientTransformation:
  """SGD with the papers' per-label rules: `with_shape_rules` around (Nesterov) momentum SGD.

  Args:
    labels: the tree from `param_labels(model)`.
    learning_rate: a float or an optax schedule (see `make_schedule`).
    momentum: 0 for plain SGD.
    nesterov: Nesterov momentum (the ACU paper).
    weight_decay: L2 coefficient, added to the gradient (Caffe's and
      PyTorch's convention), only for `decay_labels`.
    decay_labels, lr_multipliers, frozen_labels, freeze_steps, angle_eps, bounds:
      see `with_shape_rules`.
  """
  if not 0 <= momentum < 1:  # NaN too
    raise ValueError(f"momentum must be in [0, 1), got {momentum}")
  base = ([optax.trace(decay=momentum, nesterov=nesterov)] if momentum else []) + [
    optax.scale_by_learning_rate(learning_rate)
  ]
  return with_shape_rules(
    base,
    labels,
    weight_decay=weight_decay,
    decay_labels=decay_labels,
    lr_multipliers=lr_multipliers,
    frozen_labels=frozen_labels,
    freeze_steps=freeze_steps,
    angle_eps=angle_eps,
    bounds=bounds,
  )


def adamw(
  labels: Any,
  learning_rate: float | optax.Schedule,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 1e-4,
  decay_labels: Sequence[str] = ("weights",),
  lr_multipliers: Mapping[str, float] | None = None,
  frozen_labels: Sequence[str] = ("positions",),
  freeze_steps: int = 0,
  angle_eps: float | None = 1.0,
  bounds: Any = None,
) -> optax.GradientTransformation:
  """AdamW with the papers' per-label rules; its decoupled decay is masked to `decay_labels`.

  Args:
    labels: the tree from `param_labels(model)`.
    learning_rate: a float or an optax schedule.
    b1, b2, eps: Adam's.
    weight_decay: AdamW's decoupled decay, only for `decay_labels`.
    decay_labels, lr_multipliers, frozen_labels, freeze_steps, angle_eps, bounds:
      see `with_shape_rules`.
  """
  base = optax.adamw(
    learning_rate,
    b1=b1,
    b2=b2,
    eps=eps,
    weight_decay=weight_decay,
    mask=decay_mask(labels, decay_labels),
  )
  return with_shape_rules(
    base,
    labels,
    lr_multipliers=lr_multipliers,
    frozen_labels=frozen_labels,
    freeze_steps=freeze_steps,
    angle_eps=angle_eps,
    bounds=bounds,
  )
