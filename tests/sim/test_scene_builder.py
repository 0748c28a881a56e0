import numpy as np

from sim.routes import get_route
from sim.scene import Material
from sim.scene_builder import ARROW_DISTANCES_M, _arrow_quads, _route_arrows


def test_route_arrows_sit_on_the_incoming_lane_and_point_the_routes_way():
    route = get_route("one-turn")
    junction = route.network.junctions[0]
    assert junction.route_turn == "right"
    arrows = _route_arrows(junction)
    assert len(arrows) == 3 * len(ARROW_DISTANCES_M)
    # one-turn's junction is entered heading +x with the lane at y = +1.75 (keep right, y is right)
    points = arrows.reshape(-1, 2)
    assert np.all(points[:, 0] < junction.x_m - junction.half_size_m)
    shafts = arrows[0::3].reshape(-1, 2)  # each arrow's first quad is its shaft, on the lane centre
    np.testing.assert_allclose(shafts[:, 1].mean(), 1.75, atol=1e-9)
    assert np.all(points[:, 1] > 1.5)  # a right arrow only bends right
    # ... and stays in its lane (y 0..3.5), 0.3 m clear of the edge line: the old head reached y = 4.05, over
    # the kerb (a left one crossed the centre line)
    np.testing.assert_allclose(points[:, 1].max(), 3.5 - 0.3)
    right, left = _arrow_quads("right"), _arrow_quads("left")
    np.testing.assert_allclose([right[..., 1].max(), left[..., 1].min()], [1.45, -1.45])  # to the turn's side
    np.testing.assert_allclose(right[1:, :, 1], -left[1:, :, 1])  # bar and head mirror; the stem is symmetric


def test_every_route_junction_gets_arrows_in_the_scene():
    from sim.embedded import scene_for

    for name in ("straight", "two-turn"):
        route = get_route(name)
        scene = scene_for(name)
        white = scene.ground_quads[scene.ground_material == Material.MARKING_WHITE].reshape(-1, 2)
        for j in route.network.junctions.values():
            for quad in _route_arrows(j):
                assert any(np.allclose(quad[0], p) for p in white), name
