"""The papers' model families, by name: create(name, conv=..., num_classes=..., rngs=...)."""

from kshapes_jax.models import (  # noqa: F401  (registration)
  alexnet,
  convnext,
  densenet,
  imagenet,
  repvgg,
  resnet,
  small,
  vgg,
)
from kshapes_jax.models.accounting import LayerCost, ModelCost, model_cost
from kshapes_jax.models.registry import (
  ANY_KIND,
  KindsTaking,
  ModelSpec,
  abstract,
  check_kind,
  count_params,
  create,
  kind_for,
  list_models,
  spec,
)

__all__ = [
  "ANY_KIND",
  "KindsTaking",
  "LayerCost",
  "ModelCost",
  "ModelSpec",
  "abstract",
  "check_kind",
  "count_params",
  "create",
  "kind_for",
  "list_models",
  "model_cost",
  "spec",
]
