"""OpenDRIVE 1.4 export of a :class:`sim.roadnet.RoadNetwork`, so CARLA's client builds its map of our roads.

``caril serve`` hands this XML to the ``carla`` client (``get_map_data``); the client parses it itself and
answers every road query locally: ``get_waypoint``, ``next``/``previous``, ``get_topology`` and the
lane-invasion sensor. What is written:

* one ``<road>`` per road: its plan view (``line``, ``arc`` and ``spiral`` records exactly as built), a flat
  elevation, and one lane section with the driving lanes (3.5 m wide); lane -1 drives along the reference
  line and lane 1 against it, as in CARLA's right-hand traffic. Ordinary roads have a broken centre line and
  solid edge lines (as the embedded scene paints them); connecting roads inside junctions have none;
* road links (to a junction, or for connecting roads to the arm roads with their contact points) and the
  lane links of connecting roads;
* one ``<junction>`` per crossing with a ``<connection>`` and ``<laneLink>`` for each movement.

Two adaptations to CARLA's map builder (``LibCarla/source/carla/road/MapBuilder.cpp``), which the document
stays valid OpenDRIVE with:

* junction ids are numbered after every road id: the builder tells a link to a junction from a link to a
  road only by whether a road of that id exists;
* a road that ends in a dead end is split :data:`DEAD_END_TAIL_M` before its end into itself and a short
  tail road: CARLA leaves lanes without a successor out of ``get_topology()``, and route planners (ours in
  ``sim.carla_routes`` included) need every lane a route can end on in it;
* a road that starts in a dead end (a route's first road) gets a straight lead-in road of
  :data:`DEAD_END_LEAD_M` before it: a car spawned at the route start overhangs the road's start by half its
  length, and CARLA's lane-invasion sensor would report its rear entering the road as a line crossing;
* every two-way dead end (after those: a route's two ends, the stubs of unused junction arms) ends in a
  keyhole turn-around, a connecting road in a junction of its own (:func:`turn_around_plan`), so the network
  is closed as CARLA's towns are: ``next()`` never comes back empty, the Traffic Manager keeps its cars, route
  planners find a way back, and the client's ``previous_until_lane_start`` (which crashes at a lane with no
  predecessor) works. The embedded scene does not draw them and does not keep buildings off them: of 76 maps
  checked (the named routes, random:1-70), on two (random:12, random:63) a building stands on one;
* a road ending in a line is written :data:`LINE_END_PAD_M` (1 mm) longer: on our whole-metre roads, whole
  steps of the client's ``next_until_lane_end`` and ``previous_until_lane_start`` landed exactly on a lane's
  end, where it fails ("distance > 0.0"); CARLA's own roads rarely have such round lengths.

Frames: our world frame is CARLA's left-handed one (y right, heading positive towards +y); OpenDRIVE's is
right-handed and CARLA negates y when it reads a map. So every y, heading and curvature changes sign here,
and the client reports positions in our frame again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from xml.sax.saxutils import quoteattr

import numpy as np

from sim.geometry import Geometry, PlanView
from sim.roadnet import Junction, Link, Road, RoadNetwork

LINE_WIDTH_M = 0.15  # painted line width, as in sim.scene_builder
SPEED_LIMIT_KMH = 30.0  # CARLA's town default
DEAD_END_TAIL_M = 1.0
DEAD_END_LEAD_M = 5.0
LINE_END_PAD_M = 1e-3  # roads ending in a line are written this much longer (see _padded)
TURN_AROUND_RADII_M = (5.0, 3.0)  # opening arcs (over a lane width: the lane on their inside keeps an inner edge), bulb
GEO_REFERENCE = "+proj=tmerc +lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"

LaneLinks = dict[int, tuple[int | None, int | None]]  # lane id -> (predecessor lane, successor lane)


def _num(value: float) -> str:
    """Shortest text that reads back as the same double (``-0.0`` written as ``0``)."""
    value = float(value)
    return "0" if value == 0.0 else repr(value)


def _attrs(**items: object) -> str:
    return " ".join(f"{key}={quoteattr(value if isinstance(value, str) else _num(value))}"
                    for key, value in items.items())


def geometry_xml(g: Geometry) -> str:
    """One ``<geometry>`` record in OpenDRIVE's frame (y, heading and curvature negated)."""
    head = f"<geometry {_attrs(s=g.s0_m, x=g.x_m, y=-g.y_m, hdg=-g.heading_rad, length=g.length_m)}>"
    if g.kind == "line":
        body = "<line/>"
    elif g.kind == "arc":
        body = f"<arc {_attrs(curvature=-g.curvature_start)}/>"
    else:
        body = f"<spiral {_attrs(curvStart=-g.curvature_start, curvEnd=-g.curvature_end)}/>"
    return f"{head}{body}</geometry>"


def split_records(records: list[Geometry], at_s: float) -> tuple[list[Geometry], list[Geometry]]:
    """Plan-view records before and after ``at_s``; the record across it is cut in two (the second part's
    ``s`` restarts at 0). Positions, headings and curvatures are unchanged."""
    head: list[Geometry] = []
    tail: list[Geometry] = []
    for g in records:
        if g.s0_m + g.length_m <= at_s:
            head.append(g)
        elif g.s0_m >= at_s:
            tail.append(replace(g, s0_m=g.s0_m - at_s))
        else:
            d = at_s - g.s0_m
            k = float(g.curvature_at(np.array(d)))
            x, y, h, _ = g.sample(np.array([d]))
            head.append(replace(g, length_m=d, curvature_end=k if g.kind == "spiral" else g.curvature_end))
            tail.append(Geometry(0.0, float(x[0]), float(y[0]), float(h[0]), g.length_m - d,
                                 k if g.kind == "spiral" else g.curvature_start, g.curvature_end))
    return head, tail


@dataclass
class _XRoad:
    """A road as written: OpenDRIVE ids, records and links (``link`` values are ready XML elements)."""

    id: int
    name: str
    records: list[Geometry]
    length_m: float
    lane_width_m: float
    lanes: tuple[int, ...]
    junction: int = -1
    predecessor: str = ""
    successor: str = ""
    lane_links: LaneLinks = field(default_factory=dict)


def junction_ids(network: RoadNetwork, first_free: int) -> dict[int, int]:
    """OpenDRIVE ids of the junctions, from ``first_free`` on (after every road id, see the module doc)."""
    return {j: first_free + k for k, j in enumerate(sorted(network.junctions))}


def _link_xml(tag: str, link: Link | None, junction_id: dict[int, int]) -> str:
    if link is None:
        return ""
    if link.kind == "junction":
        return f'<{tag} elementType="junction" elementId="{junction_id[link.id]}"/>'
    return f'<{tag} elementType="road" elementId="{link.id}" contactPoint="{link.contact}"/>'


def connecting_lane_links(road: Road) -> LaneLinks:
    """Lane links of a connecting road's lane -1: from the lane that leaves the road it starts at, to the lane
    that enters the road it ends at (lane -1 where that road starts at the junction, else lane 1)."""
    if road.junction < 0 or road.predecessor is None or road.successor is None:
        return {}
    leaving = -1 if road.predecessor.contact == "end" else 1  # traffic on lane 1 drives towards s=0
    entering = 1 if road.successor.contact == "end" else -1
    return {-1: (leaving, entering)}


def _xroads(network: RoadNetwork) -> tuple[list[_XRoad], dict[int, int], list[str]]:
    """Every road as written (with the dead-end tails, lead-ins and turn-arounds), the junction id mapping,
    and the turn-arounds' ``<junction>`` elements."""
    ordinary = [network.roads[k] for k in sorted(network.roads) if network.roads[k].junction < 0]
    next_id = max(network.roads, default=-1) + 1
    tail_ids = {}
    for r in ordinary:
        if r.successor is None and -1 in r.lanes and r.length_m > 2 * DEAD_END_TAIL_M:
            tail_ids[r.id] = next_id + len(tail_ids)
    lead_ids = {r.id: next_id + len(tail_ids) + k for k, r in enumerate(x for x in ordinary if x.predecessor is None)}
    dead_ends = [(tail_ids.get(r.id, r.id), "end") for r in ordinary if r.successor is None and _two_way(r.lanes)]
    dead_ends += [(lead_ids[r.id], "start") for r in ordinary if r.predecessor is None and _two_way(r.lanes)]
    first_uturn = next_id + len(tail_ids) + len(lead_ids)
    junction_id = junction_ids(network, first_uturn + len(dead_ends))  # junction ids follow every road id
    first_uturn_junction = first_uturn + len(dead_ends) + len(junction_id)
    out = []
    for rid in sorted(network.roads):
        road = network.roads[rid]
        x = _XRoad(rid, f"road{rid}", list(road.plan.records), road.length_m, road.lane_width_m, road.lanes,
                   junction_id[road.junction] if road.junction >= 0 else -1,
                   _link_xml("predecessor", road.predecessor, junction_id),
                   _link_xml("successor", road.successor, junction_id), connecting_lane_links(road))
        out.append(x)
        if rid in lead_ids:
            out.append(_lead_in(road, x, lead_ids[rid]))
        if rid in tail_ids:
            tid = tail_ids[rid]
            cut = road.length_m - DEAD_END_TAIL_M
            x.records, tail_records = split_records(x.records, cut)
            x.length_m = cut
            x.successor = f'<successor elementType="road" elementId="{tid}" contactPoint="start"/>'
            x.lane_links = {lane: (x.lane_links.get(lane, (None, None))[0], lane) for lane in road.lanes}
            out.append(_XRoad(tid, f"road{rid}_end", tail_records, DEAD_END_TAIL_M, road.lane_width_m, road.lanes,
                              predecessor=f'<predecessor elementType="road" elementId="{rid}" contactPoint="end"/>',
                              lane_links={lane: (lane, None) for lane in road.lanes}))
    by_id = {x.id: x for x in out}
    junctions = []
    for k, (rid, contact) in enumerate(dead_ends):
        uturn, junction = _turn_around(by_id[rid], contact, first_uturn + k, first_uturn_junction + k)
        out.append(uturn)
        junctions.append(junction)
    return out, junction_id, junctions


def _two_way(lanes: tuple[int, ...]) -> bool:
    return set(lanes) == {-1, 1}


def turn_around_plan(x_m: float, y_m: float, heading_rad: float) -> PlanView:
    """A keyhole turn-around from ``(x_m, y_m)`` heading ``heading_rad`` back to the same point heading the
    other way (our frame: positive curvature turns right): a right arc, a left bulb, a right arc. Its right
    side (lane -1) runs from the lane arriving at a dead end, round the bulb, into the lane leaving it; the
    bulb's lane centre has a 4.75 m radius, which the car's 70 deg steering takes easily."""
    a, b = TURN_AROUND_RADII_M
    alpha = math.acos(a / (a + b))  # the bulb's centre lies on the road's axis: the turn closes
    return (PlanView(x_m, y_m, heading_rad).arc(a * alpha, 1.0 / a).arc(b * (math.pi + 2.0 * alpha), -1.0 / b)
            .arc(a * alpha, 1.0 / a))


def _turn_around(x: _XRoad, contact: str, road_id: int, junction_id: int) -> tuple[_XRoad, str]:
    """The connecting road of a turn-around at the ``contact`` end of road ``x`` (which is linked to it) and
    its ``<junction>``. CARLA's towns have no dead ends and its client assumes none: without this a lane's
    ``next()`` came back empty, the Traffic Manager removed cars there, route planners found no way back and
    ``previous_until_lane_start`` crashed the 0.9.16 client."""
    first, last = x.records[0], x.records[-1]
    if contact == "end":
        px, py, heading = last.end_pose()
        leaving, entering = -1, 1
        x.successor = f'<successor elementType="junction" elementId="{junction_id}"/>'
    else:
        px, py, heading = first.x_m, first.y_m, first.heading_rad + math.pi
        leaving, entering = 1, -1
        x.predecessor = f'<predecessor elementType="junction" elementId="{junction_id}"/>'
    plan = turn_around_plan(px, py, heading)
    link = f'elementType="road" elementId="{x.id}" contactPoint="{contact}"'
    uturn = _XRoad(road_id, f"road{x.id}_turn_{contact}", plan.records, plan.length_m, x.lane_width_m, (-1,),
                   junction_id, f"<predecessor {link}/>", f"<successor {link}/>", {-1: (leaving, entering)})
    junction = (f'<junction id="{junction_id}" name="turn_around{x.id}_{contact}"><connection id="0" '
                f'incomingRoad="{x.id}" connectingRoad="{road_id}" contactPoint="start">'
                f'<laneLink from="{leaving}" to="-1"/></connection></junction>')
    return uturn, junction


def _lead_in(road: Road, x: _XRoad, lead_id: int) -> _XRoad:
    """A straight road of :data:`DEAD_END_LEAD_M` ending where ``road`` (written as ``x``) starts."""
    first = road.plan.records[0]
    back = DEAD_END_LEAD_M
    start = Geometry(0.0, first.x_m - back * np.cos(first.heading_rad), first.y_m - back * np.sin(first.heading_rad),
                     first.heading_rad, back)
    x.predecessor = f'<predecessor elementType="road" elementId="{lead_id}" contactPoint="end"/>'
    x.lane_links = {lane: (lane, x.lane_links.get(lane, (None, None))[1]) for lane in road.lanes}
    return _XRoad(lead_id, f"road{road.id}_start", [start], back, road.lane_width_m, road.lanes,
                  successor=f'<successor elementType="road" elementId="{road.id}" contactPoint="start"/>',
                  lane_links={lane: (None, lane) for lane in road.lanes})


def _road_mark(kind: str) -> str:
    if kind == "none":
        return '<roadMark sOffset="0" type="none" material="standard" laneChange="none"/>'
    lane_change = "both" if kind == "broken" else "none"
    return (f'<roadMark {_attrs(sOffset=0.0, type=kind, weight="standard", color="white", material="standard")} '
            f'{_attrs(width=LINE_WIDTH_M, laneChange=lane_change, height=0.0)}/>')


def _lane_xml(road: _XRoad, lane_id: int) -> str:
    predecessor, successor = road.lane_links.get(lane_id, (None, None))
    link = "" if predecessor is None else f'<predecessor id="{predecessor}"/>'
    link += "" if successor is None else f'<successor id="{successor}"/>'
    mark = "none" if road.junction >= 0 else "solid"
    return (f'<lane id="{lane_id}" type="driving" level="false"><link>{link}</link>'
            f"<width {_attrs(sOffset=0.0, a=road.lane_width_m, b=0.0, c=0.0, d=0.0)}/>"
            f"{_road_mark(mark)}"
            f'<speed {_attrs(sOffset=0.0, max=SPEED_LIMIT_KMH, unit="km/h")}/></lane>')


def _padded(road: _XRoad) -> tuple[float, list[Geometry]]:
    """The road's length and records as written: one ending in a line runs :data:`LINE_END_PAD_M` longer.

    Why: our straight roads have whole-metre lengths, and the 0.9.16 client's ``next_until_lane_end(d)`` fails
    ("distance > 0.0") when whole steps land exactly on a lane's end (it then asks for the next waypoint
    minus an epsilon). A line extends exactly; a millimetre past the junction or next road is invisible.
    """
    last = road.records[-1] if road.records else None
    if last is None or last.kind != "line":
        return road.length_m, road.records
    return road.length_m + LINE_END_PAD_M, [*road.records[:-1], replace(last, length_m=last.length_m + LINE_END_PAD_M)]


def _road_xml(road: _XRoad) -> str:
    left = sorted((lane for lane in road.lanes if lane > 0), reverse=True)
    right = sorted((lane for lane in road.lanes if lane < 0), reverse=True)
    centre_mark = "none" if road.junction >= 0 or not (left and right) else "broken"
    section = '<laneSection s="0">'
    if left:
        section += "<left>" + "".join(_lane_xml(road, lane) for lane in left) + "</left>"
    section += f'<center><lane id="0" type="none" level="false">{_road_mark(centre_mark)}</lane></center>'
    if right:
        section += "<right>" + "".join(_lane_xml(road, lane) for lane in right) + "</right>"
    section += "</laneSection>"
    length, records = _padded(road)
    return (f'<road {_attrs(name=road.name, length=length)} id="{road.id}" junction="{road.junction}">'
            f"<link>{road.predecessor}{road.successor}</link>"
            f'<type s="0" type="town"><speed {_attrs(max=SPEED_LIMIT_KMH, unit="km/h")}/></type>'
            f'<planView>{"".join(geometry_xml(g) for g in records)}</planView>'
            '<elevationProfile><elevation s="0" a="0" b="0" c="0" d="0"/></elevationProfile>'
            f"<lateralProfile/><lanes>{section}</lanes><objects/><signals/></road>")


def junction_xml(junction: Junction, xodr_id: int) -> str:
    """One ``<junction>`` (id ``xodr_id`` in the document) with a connection and its lane links per movement."""
    parts = [f'<junction id="{xodr_id}" name="junction{junction.id}">']
    for c in junction.connections:
        parts.append(f'<connection id="{c.id}" incomingRoad="{c.incoming_road}" connectingRoad="{c.connecting_road}" '
                     f'contactPoint="{c.contact_point}">')
        parts += [f'<laneLink from="{a}" to="{b}"/>' for a, b in c.lane_links]
        parts.append("</connection>")
    parts.append("</junction>")
    return "".join(parts)


def _bounds(network: RoadNetwork) -> dict[str, float]:
    """north/south/east/west of all reference lines in OpenDRIVE's frame (y negated), metres."""
    if not network.roads:
        return {"north": 0.0, "south": 0.0, "east": 0.0, "west": 0.0}
    xs = np.concatenate([r.samples["x"] for r in network.roads.values()])
    ys = -np.concatenate([r.samples["y"] for r in network.roads.values()])
    return {k: round(float(v), 3) for k, v in
            {"north": ys.max(), "south": ys.min(), "east": xs.max(), "west": xs.min()}.items()}


def to_opendrive(network: RoadNetwork, name: str | None = None) -> str:
    """The whole network as an OpenDRIVE 1.4 document (roads, then junctions, in id order)."""
    header = (f'<header revMajor="1" revMinor="4" {_attrs(name=name or network.name, version="1.00")} '
              f'{_attrs(**_bounds(network))} vendor="caril">'
              f"<geoReference><![CDATA[{GEO_REFERENCE}]]></geoReference></header>")
    roads, junction_id, turn_arounds = _xroads(network)
    junctions = [junction_xml(network.junctions[j], junction_id[j]) for j in sorted(network.junctions)]
    junctions += turn_arounds
    body = "\n".join([header, *(_road_xml(r) for r in roads), *junctions])
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<OpenDRIVE>\n{body}\n</OpenDRIVE>\n'
