"""The docker set-up for a CARLA server: the compose file validates with ``docker-compose config`` (Debian's
``docker-compose`` package; no Docker engine needed) and the Dockerfile keeps its promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from sim.carla_errors import START_SERVER_HINT

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_compose_file_validates_and_starts_a_headless_gpu_carla_server():
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is needed for this check: apt-get install -y docker-compose"
    done = subprocess.run([compose, "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    config = done.stdout
    for expected in ("image: carlasim/carla:0.9.16", "-RenderOffScreen", "-nosound", "published: 2000",
                     "published: 2001", "published: 2002", "exec 3<>/dev/tcp/127.0.0.1/2000", "driver: nvidia",
                     "- gpu", "condition: service_healthy", "CARLA_HOST: carla", "dockerfile: docker/Dockerfile"):
        assert expected in config, expected


def test_dockerfile_is_a_non_root_cuda_image_with_the_carla_extra():
    text = (DOCKER / "Dockerfile").read_text()
    assert "nvidia/cuda:" in text and "runtime" in text
    assert 'pip install -e ".[carla]"' in text  # in place: the shipped policies/ are where the demo looks
    assert "USER ${USER_UID}:${USER_UID}" in text and "useradd" in text
    assert "SDL_VIDEODRIVER=dummy" in text and "xvfb" in text
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"' in text  # SIGTERM reaches the client, which restores the server


def test_the_connection_error_points_at_the_documented_command():
    readme = (DOCKER / "README.md").read_text()
    command = START_SERVER_HINT.split("`")[1]
    assert command == "docker compose -f docker/compose.yaml up -d carla"
    assert command in readme
    assert "caril evaluate --backend carla" in readme
