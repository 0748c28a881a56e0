"""The collection job: plan, round trip against a replay, noise labels, determinism, workers, resume."""

import json
import os

import numpy as np
import pytest

from agent.caril_agent import CarilAgent, CarilAgentConfig
from agent.expert import ExpertPolicy
from sim.embedded import EmbeddedSimulator
from sim.errors import CarilError
from sim.types import CameraConfig
from tests.tiny_checkpoint import save_tiny_checkpoint
from training.collect import (
    CollectConfig,
    CollectJob,
    EpisodePlan,
    config_differences,
    default_simulator,
    episode_seed,
    plan_episodes,
)
from training.dagger import DriverConfig
from training.episode_file import IMAGE_KEY, DatasetIndex, EpisodeReader, ImageCodec, check_dataset, read_manifest
from training.noise import EXPERT_CONTROL_KEY, NOISE_ACTIVE_KEY, NoiseConfig, NoisyPolicy, SteeringNoise

CAMERA = CameraConfig(width=32, height=24)


def tiny(**overrides):
    base = dict(routes=("straight", "one-turn"), weathers=("ClearNoon",), episodes=3, seed=11, camera=CAMERA,
                max_frames=30, codec=ImageCodec("png"), allow_heldout=True)
    return CollectConfig(**{**base, **overrides})


def collect(root, config, workers=1):
    job = CollectJob(config, root, workers=workers)
    job.run(job.prepare())
    return DatasetIndex(root)


def columns(index):
    return {k: index.column(k) for k in index.features if k != IMAGE_KEY}


def test_plan_cycles_routes_then_weathers_with_derived_seeds():
    config = CollectConfig(routes=("straight", "one-turn"), weathers=("ClearNoon", "WetNoon"), episodes=5, seed=3,
                           allow_heldout=True)
    plans = plan_episodes(config)
    assert [(p.route, p.weather) for p in plans] == [
        ("straight", "ClearNoon"), ("one-turn", "ClearNoon"), ("straight", "WetNoon"), ("one-turn", "WetNoon"),
        ("straight", "ClearNoon")]
    assert [p.seed for p in plans] == [episode_seed(3, i) for i in range(5)]
    assert len({p.seed for p in plans}) == 5
    assert (episode_seed(0, 0), episode_seed(0, 1)) == (2968811710, 3964924996)  # stable across versions
    many = CollectConfig(routes=tuple(f"random:{100000 + i}" for i in range(4)), weathers=("ClearNoon", "WetNoon",
                         "CloudyNoon"), episodes=8, schedule="interleave")
    assert [(p.route[-1], p.weather) for p in plan_episodes(many)] == [
        ("0", "ClearNoon"), ("1", "WetNoon"), ("2", "CloudyNoon"), ("3", "ClearNoon"),
        ("0", "CloudyNoon"), ("1", "ClearNoon"), ("2", "WetNoon"), ("3", "CloudyNoon")]  # shifted on the 2nd pass
    assert "schedule" in many.to_dict() and "schedule" not in config.to_dict()  # old configs stay as they were
    with pytest.raises(CarilError, match="--episodes must be at least 1, got 0"):
        CollectConfig(episodes=0)
    with pytest.raises(CarilError, match="unknown route 'moon'"):
        CollectConfig(routes=("moon",), allow_heldout=True)


def test_recorded_data_is_what_was_seen_and_given_in_a_replay(tmp_path):
    """Round trip: replaying each planned episode yields exactly the recorded images, states and commands."""
    config = tiny(noise=NoiseConfig(active_fraction=0.4))
    index = collect(tmp_path / "d", config)
    manifest = read_manifest(tmp_path / "d")
    assert [e["frames"] for e in manifest["episodes"]] == [30, 30, 30] and len(index) == 90
    sim = EmbeddedSimulator(camera=CAMERA)
    for ep, entry in enumerate(manifest["episodes"]):
        reader = EpisodeReader(tmp_path / "d" / entry["file"])
        assert (reader.attrs["route"], reader.attrs["seed"]) == (entry["route"], episode_seed(11, ep))
        assert reader.attrs["camera"] == CAMERA.to_dict() and reader.attrs["expert"]["name"] == "expert"
        assert np.allclose(reader.attrs["camera_K"], CAMERA.intrinsics())
        assert reader.attrs["noise"] == config.noise.to_dict() and reader.attrs["fps"] == 20.0
        obs = sim.reset(entry["route"], entry["weather"], entry["seed"])
        policy = NoisyPolicy(ExpertPolicy(dt_s=sim.dt_s), SteeringNoise(config.noise, sim.dt_s, entry["seed"]))
        policy.reset(sim.route)
        for t in range(len(reader)):
            executed, record = policy.act(obs)
            frame = reader.frame(t)
            assert np.array_equal(frame[IMAGE_KEY], obs.image)  # PNG: lossless
            assert (frame["frame_index"], frame["sim_frame"], frame["sim_time_s"]) == (t, obs.frame, obs.sim_time_s)
            assert np.array_equal(frame["observation/pose"], [obs.pose.x_m, obs.pose.y_m, obs.pose.yaw_deg])
            assert frame["observation/speed_mps"] == np.float32(obs.speed_mps)
            assert frame["observation/lateral_offset_m"] == np.float32(obs.lane.lateral_offset_m)
            assert np.array_equal(frame["action/expert"], record[EXPERT_CONTROL_KEY].to_array())
            assert np.array_equal(frame["action/executed"], executed.to_array())
            assert frame["action/noise_active"] == record[NOISE_ACTIVE_KEY]
            assert frame["events/lane_invasions"] == len(obs.lane_invasions)
            obs = sim.step(executed)
    assert index.column("action/noise_active").any()


def test_noise_perturbs_the_executed_steering_only_on_flagged_steps(tmp_path):
    index = collect(tmp_path / "d", tiny(episodes=2, max_frames=120))
    expert, executed = index.column("action/expert"), index.column("action/executed")
    noisy = index.column("action/noise_active")
    assert 0.05 < noisy.mean() < 0.6
    assert np.all(executed[noisy, 0] != expert[noisy, 0])
    assert np.array_equal(executed[~noisy], expert[~noisy])
    assert np.array_equal(executed[:, 1:], expert[:, 1:])
    assert sum(e["noise_frames"] for e in index.entries) == int(noisy.sum())
    quiet = collect(tmp_path / "q", tiny(episodes=2, max_frames=120, noise=NoiseConfig(enabled=False)))
    assert not quiet.column("action/noise_active").any()
    assert np.array_equal(quiet.column("action/executed"), quiet.column("action/expert"))


class DiesOnEpisode:
    """A simulator factory whose simulator kills its worker process when it starts the episode of ``seed``."""

    def __init__(self, seed):
        self.seed = seed

    def __call__(self, config):
        sim = default_simulator(config)
        reset, target = sim.reset, self.seed

        def dying_reset(route, weather, seed, *args, **kwargs):
            if seed == target:
                os._exit(9)  # as if killed: no exception, no cleanup
            return reset(route, weather, seed, *args, **kwargs)

        sim.reset = dying_reset
        return sim


def test_a_worker_that_dies_mid_episode_is_an_error_and_resume_finishes_the_job(tmp_path):
    config = tiny(episodes=4)
    job = CollectJob(config, tmp_path / "d", make_sim=DiesOnEpisode(episode_seed(config.seed, 2)), workers=2)
    with pytest.raises(CarilError, match=r"the worker recording episode 2 died .* rerun with --resume"):
        job.run(job.prepare())
    kept = [e["index"] for e in read_manifest(tmp_path / "d")["episodes"]]
    assert 2 not in kept
    resumed = CollectJob(config, tmp_path / "d")
    resumed.run(resumed.prepare(resume=True))
    assert [e["index"] for e in read_manifest(tmp_path / "d")["episodes"]] == [0, 1, 2, 3]
    assert check_dataset(tmp_path / "d").ok


def test_same_seed_same_data_with_one_or_two_workers(tmp_path):
    config = tiny(codec=ImageCodec("jpeg", 80), episodes=3)
    a = collect(tmp_path / "a", config)
    b = collect(tmp_path / "b", config, workers=2)
    c = collect(tmp_path / "c", tiny(codec=ImageCodec("jpeg", 80), episodes=3, seed=12))
    ca, cb = columns(a), columns(b)
    assert all(np.array_equal(ca[k], cb[k]) for k in ca)
    assert all(np.array_equal(a.encoded(i), b.encoded(i)) for i in range(len(a)))
    assert not np.array_equal(ca["action/noise_active"], columns(c)["action/noise_active"])
    assert [e["index"] for e in read_manifest(tmp_path / "b")["episodes"]] == [0, 1, 2]


def test_an_existing_dataset_needs_resume_and_the_same_settings(tmp_path):
    collect(tmp_path / "d", tiny(episodes=1))
    with pytest.raises(CarilError, match="already holds a dataset; continue it with --resume"):
        CollectJob(tiny(episodes=1), tmp_path / "d").prepare()
    changed = tiny(episodes=1, codec=ImageCodec("png", png_compression=3), camera=CameraConfig(width=40, height=24))
    with pytest.raises(CarilError, match=r"cannot resume .*camera.width: 32 -> 40; codec.png_compression: 1 -> 3"):
        CollectJob(changed, tmp_path / "d").prepare(resume=True)
    assert CollectJob(tiny(episodes=2), tmp_path / "d").prepare(resume=True) == [plan_episodes(tiny(episodes=2))[1]]
    with pytest.raises(CarilError, match="--episodes 1 is fewer than the 2 planned"):
        CollectJob(tiny(episodes=1), tmp_path / "d").prepare(resume=True)
    assert config_differences({"seed": 1, "episodes": 3, "workers": 1}, {"seed": 1, "episodes": 5, "workers": 4}) == []


def test_resume_deletes_leftovers_sets_corrupt_files_aside_and_records_exactly_the_rest(tmp_path):
    config = tiny(episodes=5)
    reference = collect(tmp_path / "ref", config)
    root = tmp_path / "d"
    job = CollectJob(config, root)
    pending = job.prepare()
    job.run(pending[:3])  # as if killed after three episodes
    episodes = root / "episodes"
    (episodes / "episode_000003.h5.partial").write_bytes(b"half an episode")
    (episodes / "episode_000001.h5").write_bytes(b"\x00" * 4096)  # corrupted on disk
    job = CollectJob(config, root)
    pending = job.prepare(resume=True)
    assert pending == [EpisodePlan(i, *([("straight", "ClearNoon"), ("one-turn", "ClearNoon")][i % 2]),
                                   episode_seed(11, i)) for i in (1, 3, 4)]
    assert not list(episodes.glob("*.partial")) and (episodes / "episode_000001.h5.corrupt").exists()
    assert [e["index"] for e in read_manifest(root)["episodes"]] == [0, 2]
    job.run(pending)
    report = check_dataset(root)
    assert report.ok and len(report.checked) == 5 and "set aside as unreadable" in report.notes[0]
    resumed = DatasetIndex(root)
    assert [e["index"] for e in resumed.entries] == [0, 1, 2, 3, 4]
    cr, cf = columns(reference), columns(resumed)
    assert all(np.array_equal(cr[k], cf[k]) for k in cr)
    assert CollectJob(config, root).prepare(resume=True) == []
    stored = json.loads((root / "config.json").read_text())
    assert stored["episodes"] == 5 and stored["camera"]["width"] == 32 and stored["codec"]["format"] == "png"


class FailingSim(EmbeddedSimulator):
    """Raises on the 50th step of its second episode."""

    resets = 0

    def reset(self, *a, **k):
        FailingSim.resets += 1
        self.steps = 0
        return super().reset(*a, **k)

    def step(self, control):
        self.steps += 1
        if FailingSim.resets == 2 and self.steps == 50:
            raise CarilError("the server went away")
        return super().step(control)


def test_a_failure_mid_episode_keeps_finished_episodes_and_leaves_no_partial_file(tmp_path):
    FailingSim.resets = 0
    job = CollectJob(tiny(max_frames=80), tmp_path / "d", make_sim=lambda cfg: FailingSim(camera=cfg.camera))
    with pytest.raises(CarilError, match="the server went away"):
        job.run(job.prepare())
    assert sorted(p.name for p in (tmp_path / "d" / "episodes").iterdir()) == ["episode_000000.h5"]
    assert [e["index"] for e in read_manifest(tmp_path / "d")["episodes"]] == [0]
    assert check_dataset(tmp_path / "d").ok


def test_the_same_job_records_on_the_carla_backend(tmp_path):
    """Through the CARLA client API against the in-memory stand-in server: only the factory differs."""
    from sim.carla_backend import CarlaSimulator
    from tests.sim.carla_standin import StandinServer

    server = StandinServer()

    def make_sim(config):
        return CarlaSimulator(camera=config.camera, carla_module=server.module(), town=None, warmup_s=0.1,
                              sensor_timeout_s=2.0, dt_s=config.dt_s)

    config = tiny(backend="carla", routes=("0:1",), episodes=2, max_frames=15)
    job = CollectJob(config, tmp_path / "d", make_sim=make_sim)
    job.run(job.prepare())
    assert check_dataset(tmp_path / "d").ok
    index = DatasetIndex(tmp_path / "d")
    assert len(index) == 30 and [e["route"] for e in index.entries] == ["0:1", "0:1"]
    reader = index.readers[1]
    assert reader.attrs["backend"] == "carla" and reader.attrs["simulator"]["route"] == "0:1"
    frames = [int(reader.image(t)[1, 1, 1]) * 256 + int(reader.image(t)[1, 1, 2]) for t in range(15)]
    assert reader.image(0)[1, 1, 0] == 7 and np.all(np.diff(frames) == 1)  # one server tick per recorded frame
    with pytest.raises(CarilError, match="--workers > 1 needs --backend embedded"):
        CollectJob(config, tmp_path / "e", make_sim=make_sim, workers=2)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), command_branches=True, steer_scale=4.0)


@pytest.mark.parametrize(("correction", "dt_s"), [("regression", 0.05), ("caril", 0.1)])
def test_dagger_the_agent_drives_and_the_expert_labels_every_state_it_reaches(tmp_path, small_checkpoint,
                                                                             correction, dt_s):
    """Replay: the executed controls are the agent's (its caril draws seeded by the episode's seed, its speed
    control stepped at the simulator's dt), the labels the expert's in the states the agent reached."""
    driver = DriverConfig("caril", str(small_checkpoint), correction)
    config = tiny(episodes=2, noise=NoiseConfig(enabled=False), driver=driver, dt_s=dt_s)
    collect(tmp_path / "d", config)
    assert json.loads((tmp_path / "d" / "config.json").read_text())["driver"] == driver.to_dict()
    sim = EmbeddedSimulator(camera=CAMERA, dt_s=dt_s)
    for entry in read_manifest(tmp_path / "d")["episodes"]:
        reader = EpisodeReader(tmp_path / "d" / entry["file"])
        assert reader.attrs["driver"] == driver.to_dict()
        agent = CarilAgent(small_checkpoint, CarilAgentConfig(correction=correction, device="cpu",
                                                               seed=entry["seed"]))
        agent.speed.dt_s = dt_s
        expert = ExpertPolicy(dt_s=sim.dt_s)
        obs = sim.reset(entry["route"], entry["weather"], entry["seed"])
        agent.reset(sim.route)
        expert.reset(sim.route)
        for t in range(len(reader)):
            label, _ = expert.act(obs)
            control, _ = agent.act(obs)
            frame = reader.frame(t)
            assert np.array_equal(frame["action/executed"], control.to_array())
            assert np.array_equal(frame["action/expert"], label.to_array())
            obs = sim.step(control)
    executed = DatasetIndex(tmp_path / "d").column("action/executed")[:, 0]
    labels = DatasetIndex(tmp_path / "d").column("action/expert")[:, 0]
    assert np.abs(executed - labels).mean() > 1e-3  # the agent is not the expert


def test_driver_settings_are_checked_and_the_experts_config_is_unchanged(tmp_path, small_checkpoint):
    with pytest.raises(CarilError, match="--driver caril needs --checkpoint RUN"):
        DriverConfig("caril")
    with pytest.raises(CarilError, match="unknown driver 'robot'"):
        DriverConfig("robot")
    with pytest.raises(CarilError, match="no checkpoint"):
        DriverConfig("caril", str(tmp_path / "missing"))
    with pytest.raises(CarilError, match="--checkpoint is for --driver caril"):
        DriverConfig("expert", str(small_checkpoint))
    assert "driver" not in tiny().to_dict()  # datasets recorded before drivers existed stay resumable
    stored = tiny().to_dict()
    dagger = tiny(driver=DriverConfig("caril", str(small_checkpoint))).to_dict()
    assert "driver.policy: '<absent>' -> 'caril'" in config_differences(stored, dagger)
