"""The OpenDRIVE exporter: the document's structure, and our roads read back through CARLA's own map API.

The client-side checks build ``carla.Map(name, xodr)`` with the real carla==0.9.16 client in a subprocess
(a failed assertion inside CARLA's map code aborts its process; it must not abort the test runner).
"""

import json
import math
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from sim.geometry import Geometry, PlanView
from sim.opendrive import (
    DEAD_END_LEAD_M,
    DEAD_END_TAIL_M,
    LINE_END_PAD_M,
    geometry_xml,
    split_records,
    to_opendrive,
    turn_around_plan,
)
from sim.routes import get_route


def parse(route: str) -> ET.Element:
    return ET.fromstring(to_opendrive(get_route(route).network))


def test_geometry_is_written_in_opendrive_frame():
    spiral = ET.fromstring(geometry_xml(Geometry(2.0, 1.0, 3.0, 0.25, 10.0, 0.01, 0.03)))
    assert {k: float(v) for k, v in spiral.attrib.items()} == {"s": 2.0, "x": 1.0, "y": -3.0, "hdg": -0.25,
                                                                "length": 10.0}
    assert {k: float(v) for k, v in spiral.find("spiral").attrib.items()} == {"curvStart": -0.01, "curvEnd": -0.03}
    arc = ET.fromstring(geometry_xml(Geometry(0.0, 0.0, 0.0, 0.0, 5.0, 0.02, 0.02)))
    assert float(arc.find("arc").get("curvature")) == -0.02
    assert ET.fromstring(geometry_xml(Geometry(0.0, 0.0, 0.0, 0.0, 5.0))).find("line") is not None


def test_splitting_a_plan_view_keeps_its_shape():
    plan = PlanView(0.0, 0.0, 0.3).line(10.0).turn(math.radians(60), 30.0).line(5.0)
    cut = 17.0  # inside the first clothoid
    head, tail = split_records(plan.records, cut)
    assert math.isclose(sum(g.length_m for g in head), cut)
    assert math.isclose(sum(g.length_m for g in tail), plan.length_m - cut)
    x, y, hd = head[-1].end_pose()
    ref = next(g for g in plan.records if g.s0_m <= cut < g.s0_m + g.length_m)
    rx, ry, rh, rk = ref.sample(np.array([cut - ref.s0_m]))
    assert np.allclose([x, y, hd], [rx[0], ry[0], rh[0]], atol=1e-9)
    assert np.allclose([tail[0].x_m, tail[0].y_m, tail[0].heading_rad, tail[0].curvature_start],
                       [rx[0], ry[0], rh[0], rk[0]], atol=1e-9)
    assert tail[0].s0_m == 0.0 and tail[-1].end_pose() == pytest.approx(plan.end_pose)


def test_junction_ids_never_equal_road_ids():
    doc = parse("two-turn")
    road_ids = {int(r.get("id")) for r in doc.iter("road")}
    junction_ids = {int(j.get("id")) for j in doc.iter("junction")}
    turn_arounds = [j for j in doc.iter("junction") if j.get("name").startswith("turn_around")]
    assert len(junction_ids) == 2 + len(turn_arounds) and len(turn_arounds) == 6  # route ends and four stubs
    assert not road_ids & junction_ids
    for link in [*doc.iter("predecessor"), *doc.iter("successor")]:
        if link.get("elementType") == "junction":
            assert int(link.get("elementId")) in junction_ids
        elif link.get("elementType") == "road":
            assert int(link.get("elementId")) in road_ids


def test_lanes_widths_and_markings():
    network = get_route("one-turn").network
    doc = parse("one-turn")
    roads = {int(r.get("id")): r for r in doc.iter("road")}
    plain = roads[0]
    assert plain.get("junction") == "-1"
    assert [lane.get("id") for lane in plain.iter("lane")] == ["1", "0", "-1"]
    assert {lane.find("width").get("a") for lane in plain.iter("lane") if lane.get("id") != "0"} == {"3.5"}
    marks = {lane.get("id"): lane.find("roadMark").get("type") for lane in plain.iter("lane")}
    assert marks == {"1": "solid", "0": "broken", "-1": "solid"}
    connecting = next(r for r in network.roads.values() if r.junction >= 0)
    element = roads[connecting.id]
    assert [lane.get("id") for lane in element.iter("lane")] == ["0", "-1"]
    assert {lane.find("roadMark").get("type") for lane in element.iter("lane")} == {"none"}
    link = element.find(".//right/lane/link")
    assert (link.find("predecessor").get("id"), link.find("successor").get("id")) == ("-1", "-1")  # 0 -> arm start


def test_dead_ends_get_a_tail_and_the_start_a_lead_in():
    network = get_route("one-turn").network
    doc = parse("one-turn")
    roads = {r.get("name"): r for r in doc.iter("road")}
    dead = [r for r in network.roads.values() if r.junction < 0 and r.successor is None]
    assert len(dead) == 3  # the route's last road and two stubs
    for road in dead:
        main, tail = roads[f"road{road.id}"], roads[f"road{road.id}_end"]
        # both written LINE_END_PAD_M longer: they end in lines (test_the_served_network_has_no_dead_ends)
        assert math.isclose(float(main.get("length")) + float(tail.get("length")), road.length_m + 2 * LINE_END_PAD_M)
        assert float(tail.get("length")) == DEAD_END_TAIL_M + LINE_END_PAD_M
        assert main.find("link/successor").get("elementId") == tail.get("id")
    lead = roads["road0_start"]
    assert float(lead.get("length")) == DEAD_END_LEAD_M + LINE_END_PAD_M
    assert roads["road0"].find("link/predecessor").get("elementId") == lead.get("id")


_CLIENT_MAP_SCRIPT = textwrap.dedent("""
    import json, math, sys
    import carla
    from sim.opendrive import to_opendrive
    from sim.routes import get_route

    route = get_route(sys.argv[1])
    net = route.network
    m = carla.Map("check", to_opendrive(net))
    out = {}
    worst = 0.0
    for rid, road in net.roads.items():
        for lane in road.lanes:
            c = road.lane_centre(lane)
            s = road.samples["s"] if lane < 0 else road.samples["s"][::-1]
            for k in range(0, len(s), 5):
                if 0.01 < s[k] < road.length_m - 1.5:
                    w = m.get_waypoint_xodr(rid, lane, float(s[k])).transform.location
                    worst = max(worst, math.hypot(w.x - c["x"][k], w.y - c["y"][k]))
    out["worst_lane_centre_error_m"] = worst
    start = m.get_waypoint(carla.Location(x=float(route.x[0]) + 5.0, y=float(route.y[0])))
    out["start"] = [start.road_id, start.lane_id, start.lane_width, str(start.left_lane_marking.type),
                    str(start.right_lane_marking.type), start.is_junction]
    legs = list(dict.fromkeys(zip(route.road_id.tolist(), route.lane_id.tolist())))
    wp, walked = start, [(start.road_id, start.lane_id)]
    split = None
    while True:
        options = wp.next(1.0)
        if not options:
            break
        if len(options) > 1 and split is None:
            split = sorted((o.road_id, o.is_junction) for o in options)
        nxt = legs[legs.index(walked[-1]) + 1] if walked[-1] in legs[:-1] else None
        chosen = [o for o in options if (o.road_id, o.lane_id) in (walked[-1], nxt)]
        if not chosen:
            break
        wp = chosen[0]
        if (wp.road_id, wp.lane_id) != walked[-1]:
            walked.append((wp.road_id, wp.lane_id))
    out["walked"] = walked
    out["legs"] = legs
    out["first_split"] = split
    sources = {(a.road_id, a.lane_id) for a, _ in m.get_topology()}
    out["lanes_missing_from_topology"] = [[r.id, lane] for r in net.roads.values() for lane in r.lanes
                                          if (r.id, lane) not in sources]
    print(json.dumps(out))
""")


def client_map(route: str) -> dict:
    result = subprocess.run([sys.executable, "-c", _CLIENT_MAP_SCRIPT, route], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("route", ["two-turn", "curves"])
def test_carla_reads_our_roads_back(route):
    out = client_map(route)
    assert out["worst_lane_centre_error_m"] < 1e-3  # lines, arcs and clothoids evaluate as ours
    assert out["start"] == [0, -1, 3.5, "Broken", "Solid", False]
    assert out["walked"] == out["legs"]  # next() follows every leg of the route, through its junctions
    assert out["lanes_missing_from_topology"] == []


def test_next_splits_into_the_three_movements_at_a_junction():
    network = get_route("two-turn").network
    out = client_map("two-turn")
    movements = sorted(c.connecting_road for c in network.junctions[0].connections if c.incoming_road == 0)
    assert out["first_split"] == [[r, True] for r in movements]


_CLOSED_NETWORK_SCRIPT = textwrap.dedent("""
    import json, sys
    import carla
    import networkx
    from sim.opendrive import to_opendrive
    from sim.routes import get_route

    route = get_route(sys.argv[1])
    m = carla.Map("check", to_opendrive(route.network))
    wps = m.generate_waypoints(2.0)
    ends = [w for w in wps if not w.next(2.0) or not w.previous(2.0)]
    start = m.get_waypoint(carla.Location(x=float(route.x[0]) + 5.0, y=float(route.y[0])))
    back = start.previous_until_lane_start(2.0)  # crashed the 0.9.16 client at a lane with no predecessor
    goal = m.get_waypoint(carla.Location(x=float(route.x[-1]), y=float(route.y[-1])))
    ahead = goal.next_until_lane_end(2.0)
    graph = networkx.DiGraph()
    for a, b in m.get_topology():
        graph.add_edge((a.road_id, a.lane_id, round(a.s)), (b.road_id, b.lane_id, round(b.s)))
    failed = 0  # whole steps from whole-metre waypoints landing on a lane's end failed with "distance > 0.0"
    for w in wps[::3]:
        for step in (1.0, 2.0):
            for walk in (w.next_until_lane_end, w.previous_until_lane_start):
                try:
                    walk(step)
                except RuntimeError:
                    failed += 1
    print(json.dumps({"waypoints": len(wps), "dead": len(ends), "back": len(back), "ahead": len(ahead),
                      "strongly_connected": networkx.is_strongly_connected(graph), "walks_failed": failed}))
""")


@pytest.mark.parametrize("route", ["one-turn", "mixed", "random:3"])
def test_the_served_network_has_no_dead_ends(route):
    """Every lane goes on and comes from somewhere (dead ends turn round in a keyhole), as in CARLA's towns:
    the client's own calls and route planners over get_topology() assume it."""
    result = subprocess.run([sys.executable, "-c", _CLOSED_NETWORK_SCRIPT, route], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["waypoints"] > 100 and out["dead"] == 0 and out["back"] > 0 and out["ahead"] > 0
    assert out["strongly_connected"]  # any lane reaches any other
    assert out["walks_failed"] == 0  # next_until_lane_end / previous_until_lane_start from every third waypoint


def test_a_turn_around_closes_on_its_road():
    for heading in (0.0, 1.0, -2.5):
        x, y, h = turn_around_plan(10.0, 5.0, heading).end_pose
        assert (x, y) == pytest.approx((10.0, 5.0), abs=1e-9)
        assert math.cos(h - heading) == pytest.approx(-1.0)  # back the way it came
