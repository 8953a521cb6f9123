"""kshapes_jax.analysis on small inputs whose answers are known by hand."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kshapes_jax as K
from kshapes_jax.analysis import acb, active, dcls, rotate, versatile

# ---------------------------------------------------------------- RotateConv


def test_wrap_angles_takes_lines_modulo_180():
  np.testing.assert_allclose(
    rotate.wrap_angles([-45.0, 0.0, 180.0, 225.0, 359.0, -1e-20]),
    [135.0, 0.0, 0.0, 45.0, 179.0, 0.0],
  )


def test_axial_difference_ignores_the_sign_of_lines():
  np.testing.assert_allclose(
    rotate.axial_difference([170.0, 10.0, 90.0, 0.0], [10.0, 200.0, 0.0, 45.0]),
    [20.0, 10.0, 90.0, 45.0],
  )


def test_angles_along_channels_pick_the_column_and_the_row():
  angles = np.array([[10.0, 20.0, 30.0], [190.0, 200.0, -150.0]])  # (I=2, O=3)
  np.testing.assert_allclose(rotate.angles_along_inputs(angles, 0), [10.0, 10.0])
  np.testing.assert_allclose(rotate.angles_along_inputs(angles, 2), [30.0, 30.0])
  np.testing.assert_allclose(rotate.angles_along_outputs(angles, 1), [10.0, 20.0, 30.0])
  with pytest.raises(ValueError, match="output_channel"):
    rotate.angles_along_inputs(angles, 3)
  with pytest.raises(ValueError, match=r"\(I, O\)"):
    rotate.angles_along_outputs(np.zeros(3), 0)


def test_angle_histogram_counts_every_angle_in_its_bin():
  counts, edges = rotate.angle_histogram([0.0, 44.9, 45.0, 179.9, 180.0, -90.0], bins=4)
  np.testing.assert_allclose(edges, [0, 45, 90, 135, 180])
  np.testing.assert_array_equal(counts, [3, 1, 1, 1])  # 0, 44.9, 180->0 | 45 | -90->90 | 179.9


def test_axial_concentration_is_one_for_one_line_and_zero_for_a_star():
  assert rotate.axial_concentration([30.0, 210.0, -150.0]) == pytest.approx(1.0)
  assert rotate.axial_concentration([0.0, 45.0, 90.0, 135.0]) == pytest.approx(0.0, abs=1e-12)
  # perpendicular lines cancel
  assert rotate.axial_concentration([0.0, 90.0]) == pytest.approx(0.0, abs=1e-12)


def test_rotate_layers_reads_every_rotateconv():
  model = K.models.create("sn", conv="rotate2")
  layers = rotate.rotate_layers(model)
  assert [name for name, _ in layers] == ["convs/0", "convs/1", "convs/2", "convs/3"]
  chex.assert_shape(layers[1][1], (20, 50))


# ---------------------------------------------------------------- ACU


def test_with_origin_puts_synapse_zero_first():
  p = np.array([[-1.0, -1.0], [0.0, -1.0]])
  np.testing.assert_array_equal(active.with_origin(p), [[0, 0], [-1, -1], [0, -1]])
  chex.assert_shape(active.with_origin(np.zeros((4, 8, 2))), (4, 9, 2))
  with pytest.raises(ValueError, match="alpha, beta"):
    active.with_origin(np.zeros((3, 3)))


def test_displacement_is_the_distance_from_the_start():
  traj = active.trajectories(
    [[[0.0, 0.0], [1.0, 1.0]], [[3.0, 4.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 3.0]]]
  )
  np.testing.assert_allclose(active.displacement(traj), [[0, 0], [5, 0], [1, 2]])
  with pytest.raises(ValueError, match="one shape"):
    active.trajectories([np.zeros((2, 2)), np.zeros((3, 2))])


def test_extent_is_the_chebyshev_radius():
  assert active.extent(np.asarray(K.kernels.lattice_positions(3))) == 1.0
  assert active.extent([[0.0, 0.0], [-2.5, 1.0]]) == 2.5


def test_active_layers_reads_positions_with_the_origin():
  model = K.models.create("acu_plain", conv="active", width=0.25)
  layers = active.active_layers(model)
  assert len(layers) == 6
  name, positions = layers[0]
  assert name == "convs/0/conv"
  # the 3x3 lattice at initialisation, origin first
  np.testing.assert_allclose(
    np.sort(positions, axis=0), np.sort(np.asarray(K.kernels.lattice_positions(3)), axis=0)
  )
  np.testing.assert_array_equal(positions[0], [0, 0])


# ---------------------------------------------------------------- ACNet


def test_skeleton_and_regions_of_a_3x3():
  np.testing.assert_array_equal(acb.skeleton_mask(3), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
  np.testing.assert_array_equal(acb.region_mask(3, "corners"), [[1, 0, 1], [0, 0, 0], [1, 0, 1]])
  assert acb.region_mask(5, "skeleton").sum() == 9 and acb.region_mask(5, "global").all()
  with pytest.raises(ValueError, match="odd"):
    acb.skeleton_mask(4)


def test_magnitude_matrix_of_known_kernels():
  # layer 1: |S| = [[1,2,1],[2,4,2],[1,2,1]] summed over I=1, O=2 (signs ignored) -> S / 4
  base = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
  k1 = np.stack([base / 2, -base / 2], axis=-1)[:, :, None, :]
  # layer 2: only the centre -> one-hot centre
  k2 = np.zeros((3, 3, 2, 1))
  k2[1, 1] = [[3.0], [-1.0]]
  a = acb.magnitude_matrix([k1, k2])
  expected = (base / 4 + np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]])) / 2
  np.testing.assert_allclose(a, expected)
  assert a[1, 1] == 1.0
  with pytest.raises(ValueError, match="all zeros"):
    acb.magnitude_matrix([np.zeros((3, 3, 1, 1))])
  with pytest.raises(ValueError, match="one spatial size"):
    acb.magnitude_matrix([k1, np.ones((5, 5, 1, 1))])


@pytest.mark.parametrize("region", acb.REGIONS)
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.3])
def test_pruning_mask_has_the_exact_sparsity_inside_its_region(region, sparsity):
  shape = (3, 3, 4, 5)  # 180 weights
  keep = acb.pruning_mask(shape, sparsity, region, seed=3)
  assert keep.shape == shape and keep.dtype == bool
  assert (~keep).sum() == round(sparsity * 180)
  outside = ~acb.region_mask(3, region)
  assert keep[outside].all()  # nothing pruned outside the region


def test_pruning_mask_refuses_more_than_the_region_holds_and_depends_on_the_seed():
  shape = (3, 3, 2, 2)  # corners hold 16 of 36
  assert (~acb.pruning_mask(shape, 16 / 36, "corners", 0)).sum() == 16
  with pytest.raises(ValueError, match="hold only 16"):
    acb.pruning_mask(shape, 17 / 36, "corners", 0)
  a, b = (acb.pruning_mask((3, 3, 8, 8), 0.2, "global", s) for s in (0, 1))
  assert (a != b).any()
  np.testing.assert_array_equal(a, acb.pruning_mask((3, 3, 8, 8), 0.2, "global", 0))


def test_prune_zeroes_every_kxk_layer_of_a_deployed_model_and_leaves_it_unchanged():
  deployed = K.deploy(K.models.create("cifar_quick", conv="acb", rngs=nnx.Rngs(1)))
  before = [np.asarray(layer.kernel[...]) for _, layer in acb.square_convs(deployed)]
  assert [k.shape[:2] for k in before] == [(5, 5)] * 3
  pruned = acb.prune(deployed, 0.2, "skeleton", seed=0)
  for (_, layer), original in zip(acb.square_convs(pruned), before):
    kernel = np.asarray(layer.kernel[...])
    assert (kernel == 0).sum() == round(0.2 * kernel.size)
    corners = acb.region_mask(5, "corners")
    np.testing.assert_array_equal(kernel[corners], original[corners])
  for (_, layer), original in zip(acb.square_convs(deployed), before):
    np.testing.assert_array_equal(np.asarray(layer.kernel[...]), original)


def test_distortions_move_pixels_where_table_4_says():
  x = np.arange(2 * 3 * 3 * 1).reshape(2, 3, 3, 1)
  img = x[0, :, :, 0]  # [[0,1,2],[3,4,5],[6,7,8]]
  np.testing.assert_array_equal(acb.distort(x, "original"), x)
  np.testing.assert_array_equal(
    acb.distort(x, "rotate90")[0, :, :, 0], [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
  )
  np.testing.assert_array_equal(acb.distort(x, "rotate180")[0, :, :, 0], img[::-1, ::-1])
  np.testing.assert_array_equal(
    acb.distort(x, "flip_ud")[0, :, :, 0], [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
  )
  # 180 = up-down flip followed by a left-right flip (the paper's remark)
  np.testing.assert_array_equal(acb.distort(x, "rotate180"), acb.distort(x, "flip_ud")[:, :, ::-1])
  with pytest.raises(ValueError, match="kind"):
    acb.distort(x, "rotate45")


def test_an_acb_with_only_horizontal_kernels_commutes_with_up_down_flips():
  """Fig. 4: a 1xk kernel gives the same outputs at mirrored rows of a flipped input."""
  layer = K.nn.make_conv("acb", 1, 2, 3, asymmetric="hor", rngs=nnx.Rngs(0))
  layer.eval()
  layer.square.set_value(jnp.zeros_like(layer.square[...]))  # keep only the horizontal branch
  x = np.random.default_rng(0).normal(size=(1, 6, 6, 1)).astype(np.float32)
  y = np.asarray(layer(jnp.asarray(x)))
  y_flipped = np.asarray(layer(jnp.asarray(acb.distort(x, "flip_ud"))))
  np.testing.assert_allclose(y_flipped, y[:, ::-1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- versatile


def test_cost_table_matches_table_2_of_the_versatile_paper():
  for variant, weights, flops in (("baseline", 4.3e5, 22.93e5), ("model3", 2.2e5, 12.00e5)):
    model = (
      K.models.create("lenet")
      if variant == "baseline"
      else K.models.create("lenet", conv="versatile", variant=variant)
    )
    rows = versatile.cost_table(model, (28, 28, 1))
    total = rows[-1]
    assert total["layer"] == "total"
    assert total["weights"] == sum(r["weights"] for r in rows[:-1])
    assert total["memory_kb"] == pytest.approx(4 * total["weights"] / 1024)
    assert total["weights"] == pytest.approx(weights, rel=0.03)
    assert total["multiplications"] == pytest.approx(flops, rel=0.03)


def test_cost_table_first_layer_by_hand():
  # 5x5x1x20 on 28x28 -> 24x24x20: 500 weights, 24*24*20*25 multiplications
  rows = versatile.cost_table(K.models.create("lenet"), (28, 28, 1))
  assert rows[0]["weights"] == 500 and rows[0]["multiplications"] == 24 * 24 * 20 * 25


def test_secondary_filters_are_the_nested_masks_times_the_primary():
  f = np.arange(25, dtype=np.float32).reshape(5, 5, 1, 1) + 1
  s = versatile.secondary_filters(f)
  chex.assert_shape(s, (3, 5, 5, 1, 1))
  np.testing.assert_array_equal(s[0], f)
  assert (s[1, :, :, 0, 0] != 0).sum() == 9 and s[1, 1:4, 1:4, 0, 0].tolist() == f[
    1:4, 1:4, 0, 0
  ].tolist()
  assert (s[2, :, :, 0, 0] != 0).sum() == 1 and s[2, 2, 2, 0, 0] == 13


def test_filter_mosaic_places_filters_on_a_grid():
  k = np.stack([np.full((2, 2), float(o)) for o in range(5)], axis=-1)  # (2, 2, 5)
  m = versatile.filter_mosaic(k, columns=3, pad=1)
  assert m.shape == (2 * 3 - 1, 3 * 3 - 1)
  np.testing.assert_array_equal(m[0:2, 3:5], 1.0)
  np.testing.assert_array_equal(m[3:5, 3:5], 4.0)
  assert np.isnan(m[2]).all() and np.isnan(m[3:5, 6:8]).all()  # gap row, unused tile
  with pytest.raises(ValueError, match=r"\(d, d, O\)"):
    versatile.filter_mosaic(np.zeros((2, 2, 3, 4)))


# ---------------------------------------------------------------- DCLS


def test_dcls_spread_edge_share_and_density_by_hand():
  p = np.asarray([[0.0, 0.0], [3.0, 4.0], [-2.0, 2.0], [2.0, -2.0]])
  assert dcls.spread(p) == pytest.approx((0 + 5 + 2 * np.sqrt(8)) / 4)
  assert dcls.at_bound(p, 5) == pytest.approx(6 / 8)  # |coordinate| >= 2 in a 5 x 5 window
  counts = dcls.density(p, 5)
  assert counts.sum() == 4 and counts[2, 2] == 1 and counts[4, 4] == 1  # (3, 4) on the edge
  assert counts[4, 0] == 1 and counts[0, 4] == 1  # rows are y: (-2, 2) is row 4, column 0


def test_dcls_section_reads_each_layer_and_draws_the_density(tmp_path):
  from train.analyze import dcls as section

  class Run:
    initial = K.models.create("acu_plain", conv="dcls", width=0.25, rngs=nnx.Rngs(0))
    model = K.models.create(
      "acu_plain", conv="dcls", width=0.25, conv_options={"interpolation": "gauss"}
    )

  assert section.applies(Run)
  results = section.compute(Run)
  names = [layer.name for layer in dcls.dcls_layers(Run.model)]
  assert names and list(results["spread"]) == names
  assert all(0 < v < 2.5 for v in results["spread"].values())  # N(0, 0.5) in a 5 x 5 window
  assert all(s == pytest.approx(0.5) for s in results["sigma"].values())  # 0.23 + 0.27
  lines = section.render(Run, results, tmp_path, "t")
  assert (tmp_path / "dcls_positions.png").stat().st_size > 0 and "## DCLS positions" in lines
