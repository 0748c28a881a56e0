"""Golden bytes of every encoder and decoder of caril serve's CARLA 0.9.16 wire formats (no client needed).

The expected bytes are written out by hand from the layouts in ../shared/reference/carla-wire-protocol.md:
msgpack-rpc framing and ``Response`` wrappers, the 24-byte token, the 48-byte sensor header, the 36-byte
episode header, the 119-byte actor record, the image header and the collision body.
"""

import struct

import msgpack
import pytest

from sim.carla_server.blueprints import actor_definitions, camera_config, sensor_tick_s, sticky_control
from sim.carla_server.encoding import (
    PROTOCOLS,
    RESPONSE_VOID_OK,
    ActorDescription,
    ActorState,
    AttributeDef,
    EpisodeSettings,
    ProtocolMismatch,
    Transform,
    VehicleControl,
    WeatherParameters,
    decode_command,
    decode_request,
    decode_vector,
    encode_actor,
    encode_bounding_box,
    encode_response,
    encode_rpc_error,
    encode_token,
    f32,
    is_error,
    pack_actor_state,
    pack_collision_body,
    pack_episode_header,
    pack_image_header,
    pack_sensor_header,
    pack_token,
    protocol_for,
    response_error,
    response_ok,
    unpack_token,
)
from sim.errors import UsageError

P = PROTOCOLS["0.9.16"]


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def f4(*values: float) -> str:
    return struct.pack(f"<{len(values)}f", *values).hex()


# -- RPC framing ----------------------------------------------------------------------------------------------


def test_the_captured_version_request_decodes():
    raw = h("94 00 01 a7") + b"version" + h("91 91 c2")  # [0, 1, "version", [[false]]], 14 bytes
    assert len(raw) == 14
    request = decode_request(msgpack.unpackb(raw, raw=False))
    assert request == (1, "version", False, [])


def test_an_async_request_keeps_its_arguments_after_the_metadata():
    raw = msgpack.packb([0, 9, "apply_control_to_vehicle", [[True], 5, [0.5, 0.0, 0.0, False, False, False, 0]]])
    request = decode_request(msgpack.unpackb(raw, raw=False))
    assert (request.msgid, request.name, request.asynchronous) == (9, "apply_control_to_vehicle", True)
    assert request.args == [5, [0.5, 0.0, 0.0, False, False, False, 0]]


def test_a_non_request_is_refused():
    with pytest.raises(ValueError, match="not a msgpack-rpc request"):
        decode_request([1, 2, None, None])


def test_response_forms_golden_bytes():
    assert encode_response(1, response_ok("0.9.16")) == h("94 01 01 c0 91 92 01 a6") + b"0.9.16"
    assert encode_response(7, RESPONSE_VOID_OK) == h("94 01 07 c0 91 91 c2")
    assert encode_response(2, response_error("no")) == h("94 01 02 c0 91 92 00 91 a2") + b"no"
    assert encode_rpc_error(3, "bad") == h("94 01 03 a3") + b"bad" + h("c0")
    assert is_error(response_error("no")) and not is_error(RESPONSE_VOID_OK) and not is_error(response_ok(0))


# -- structs --------------------------------------------------------------------------------------------------


def test_f32_recovers_the_typed_decimal():
    sent = struct.unpack("<f", struct.pack("<f", 2.4))[0]
    assert sent != 2.4 and f32(sent) == 2.4
    assert f32(0.5) == 0.5


def test_transform_round_trip_and_layout():
    t = Transform(1.0, -2.0, 0.5, 1.0, 20.0, 3.0)
    assert t.to_msg() == [[1.0, -2.0, 0.5], [1.0, 20.0, 3.0]]  # location, then (pitch, yaw, roll)
    wire = struct.unpack("<6f", struct.pack("<6f", 1.0, -2.0, 2.4, 0.1, 20.0, 3.0))
    assert Transform.from_msg([wire[:3], wire[3:]]) == (1.0, -2.0, 2.4, 0.1, 20.0, 3.0)
    assert decode_vector([1.5, 0.0, -2.0]) == (1.5, 0.0, -2.0)
    assert encode_bounding_box((0.0, 0.0, 0.7), (2.4, 1.1, 0.7)) == [[0.0, 0.0, 0.7], [2.4, 1.1, 0.7], [0.0, 0.0, 0.0]]


def test_episode_settings_wire_layout():
    settings = EpisodeSettings(synchronous_mode=True, fixed_delta_seconds=0.05)
    msg = settings.to_msg()
    assert msg == [True, False, [True, 0.05], True, 0.01, 10, 0.0, False, 3000.0, 2000.0, True]
    assert EpisodeSettings().to_msg()[2] == [False]
    assert EpisodeSettings.from_msg(msg, P) == settings
    assert EpisodeSettings.from_msg(EpisodeSettings().to_msg(), P).fixed_delta_seconds is None


def test_a_struct_of_another_version_names_the_protocol():
    ten_fields = EpisodeSettings().to_msg()[:10]
    with pytest.raises(ProtocolMismatch, match=r"WorldSettings of 10 fields where carla 0\.9\.16 sends 11.*"
                                               r"pip install carla==0\.9\.16"):
        EpisodeSettings.from_msg(ten_fields, P)
    with pytest.raises(ProtocolMismatch, match="VehicleControl of 6 fields"):
        VehicleControl.from_msg([0.5, 0.0, 0.0, False, False, False], P)
    with pytest.raises(ProtocolMismatch, match="WeatherParameters of 13 fields"):
        WeatherParameters.from_msg([0.0] * 13, P)


def test_unknown_client_versions_list_the_known_ones():
    assert protocol_for("0.9.16") is P
    with pytest.raises(ProtocolMismatch, match=r"no protocol table for carla client '0\.9\.15'; it speaks 0\.9\.16"):
        protocol_for("0.9.15")


def test_weather_and_control_layouts():
    weather = WeatherParameters(cloudiness=60.0, sun_altitude_angle=15.0)
    msg = weather.to_msg()
    assert len(msg) == 14 and msg[0] == 60.0 and msg[5] == 15.0 and msg[8] == 0.1  # fog_falloff 9th
    assert WeatherParameters.from_msg(msg, P) == weather
    control = VehicleControl(0.5, -0.25, 0.0, True, False, False, 0)
    assert control.to_msg() == [0.5, -0.25, 0.0, True, False, False, 0]
    assert VehicleControl.from_msg(control.to_msg(), P) == control


def test_actor_definitions_use_the_one_based_attribute_codes():
    attr = AttributeDef("number_of_wheels", "int", "4")
    assert attr.to_msg(P) == ["number_of_wheels", 2, "4", [], False, False]
    codes = {a.kind: a.to_msg(P)[1] for d in actor_definitions() for a in d.attributes}
    assert codes == {"bool": 1, "int": 2, "float": 3, "string": 4, "rgbcolor": 5}
    ids = [d.to_msg(P)[1] for d in actor_definitions()]
    assert ids == ["vehicle.tesla.model3", "sensor.camera.rgb", "sensor.other.collision", "sensor.other.lane_invasion"]


def test_actor_description_and_actor_golden_bytes():
    description = ActorDescription.from_msg([1, "vehicle.tesla.model3", [["role_name", 4, "hero"]]])
    assert description.attributes == {"role_name": (4, "hero")} and description.value("role_name") == "hero"
    actor = encode_actor(2, 0, description, encode_bounding_box((0.0, 0.0, 0.5), (2.0, 1.0, 0.5)), bytes([14]),
                         pack_token(3, 2001))
    packed = msgpack.packb(actor, use_bin_type=True)
    expected = (h("96 02 00") + h("93 01 b4") + b"vehicle.tesla.model3" + h("91 93 a9") + b"role_name" + h("04 a4")
                + b"hero" + h("93 93 cb") + struct.pack(">d", 0.0) + h("cb") + struct.pack(">d", 0.0) + h("cb")
                + struct.pack(">d", 0.5) + h("93 cb") + struct.pack(">d", 2.0) + h("cb") + struct.pack(">d", 1.0)
                + h("cb") + struct.pack(">d", 0.5) + h("93 cb") + bytes(8) + h("cb") + bytes(8) + h("cb") + bytes(8)
                + h("c4 01 0e c4 18") + pack_token(3, 2001))
    assert packed == expected  # semantic tags and the token are BIN (c4), never arrays


def test_commands_decode_by_their_variant_index():
    spawn = decode_command([[0, [[1, "vehicle.tesla.model3", []], [[0, 0, 0], [0, 0, 0]], [False], 0, "", []]]], P)
    assert spawn.name == "SpawnActor" and len(spawn.body) == 6
    control = decode_command([[2, [12, [0.5, 0.0, 0.0, False, False, False, 0]]]], P)
    assert control == ("ApplyVehicleControl", [12, [0.5, 0.0, 0.0, False, False, False, 0]])
    assert decode_command([[16, [26, True]]], P).name == "SetAutopilot"
    assert decode_command([[99, [1]]], P).name == "#99"


# -- binary stream layouts ------------------------------------------------------------------------------------


def test_token_golden_bytes():
    token = pack_token(5, 2001)
    assert token == h("05000000 d107 01 00") + bytes(16)  # stream id | port | tcp | address unset
    assert unpack_token(token) == (5, 2001)
    assert encode_token(1, 2001) == [pack_token(1, 2001)]


def test_sensor_header_golden_bytes():
    header = pack_sensor_header(13, 42, 2.5, Transform(1.0, -2.0, 0.5, 0.0, 90.0, 0.0))
    assert header == h("0d00000000000000 2a00000000000000 0000000000000440" + f4(1.0, -2.0, 0.5, 0.0, 90.0, 0.0))
    assert len(header) == 48


def test_episode_header_golden_bytes():
    header = pack_episode_header(3, 100.0, 0.05, 1)
    assert header == h("0300000000000000 0000000000005940" + f4(0.05) + "00000000" * 3 + "01000000")
    assert len(header) == P.episode_header_size == 36


def test_vehicle_record_golden_bytes():
    state = ActorState(9, Transform(1.0, 2.0, 0.0, 0.0, 45.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 10.0),
                       (0.5, 0.0, 0.0), VehicleControl(0.5, -0.25, 0.0, True, False, False, 3), 30.0)
    record = pack_actor_state(state, P)
    expected = h("09000000 01" + f4(1, 2, 0, 0, 45, 0) + f4(1, 0, 0) + f4(0, 0, 10) + f4(0.5, 0, 0)
                 + f4(0.5, -0.25, 0.0) + "01 00 00" + "03000000" + f4(30.0) + "02 00 00000000 00")  # light Green
    assert record == expected + bytes(119 - len(expected))
    assert len(record) == P.actor_state_size == 119


def test_other_actor_records_are_zero_padded():
    record = pack_actor_state(ActorState(1, Transform(5.0, 6.0, 30.0, -90.0, 0.0, 0.0)), P)
    assert record == h("01000000 01" + f4(5, 6, 30, -90, 0, 0)) + bytes(36 + 54)


def test_image_header_and_collision_body():
    assert pack_image_header(64, 48, 90.0) == h("40000000 30000000" + f4(90.0))
    me = encode_actor(2, 0, ActorDescription(1, "vehicle.tesla.model3"), encode_bounding_box((0, 0, 0), (1, 1, 1)))
    other = encode_actor(0, 0, ActorDescription(0, "static.building"), encode_bounding_box((0, 0, 0), (0, 0, 0)))
    body = pack_collision_body(me, other, (-1.0, 0.0, 0.0))
    assert msgpack.unpackb(body, raw=False) == [me, other, [-1.0, 0.0, 0.0]]
    assert body[:3] == h("93 96 02")


# -- blueprint attributes back into our configs ------------------------------------------------------------


def test_camera_attributes_become_a_camera_config():
    description = ActorDescription(2, "sensor.camera.rgb", {"image_size_x": (2, "64"), "image_size_y": (2, "48"),
                                                            "fov": (3, "100"), "sensor_tick": (3, "0.1")})
    config = camera_config(description, (1.5, 0.0, 2.4, -5.0, 0.0, 0.0))
    assert (config.width, config.height, config.fov_deg, config.z_m, config.pitch_deg) == (64, 48, 100.0, 2.4, -5.0)
    assert sensor_tick_s(description) == 0.1
    with pytest.raises(UsageError, match="camera size 4x600 is outside 8..4096"):
        camera_config(ActorDescription(2, "sensor.camera.rgb", {"image_size_x": (2, "4")}), (0, 0, 2, 0, 0, 0))
    assert sticky_control(ActorDescription(1, "vehicle.tesla.model3", {"sticky_control": (1, "False")})) is False
