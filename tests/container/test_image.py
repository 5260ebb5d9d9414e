"""The image SageMaker runs: built from the production Dockerfile and run as SageMaker runs it.

`container/build.sh` builds the CPU variant of the same Dockerfile with podman (no Docker engine
and no registry here). Two tiny artifacts come from `python -m optimize build`: a plain folder,
and one with compile caches, so the server runs Inductor and gcc at start-up inside the
container. Each is served by `podman run ... IMAGE serve` under SageMaker's conditions:

- `--shm-size=64m`: an endpoint's /dev/shm, which cannot be changed (sagemaker-python-sdk#2801);
- the artifact read-only at /opt/ml/model;
- port 8080 published, on loopback only;
- no outbound network: slirp4netns with `outbound_addr=127.0.0.1` (no route, no DNS) and
  `allow_host_loopback=false`. Only the CI host's own addresses stay reachable: slirp has no
  switch for that, and `--network=none` could not publish the port.

Run: `python -m pytest tests/container -rP` (-rP prints the measured start-up times).
The image build is layer-cached by podman; the first one takes a few minutes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import wait_for, wait_until_all_arrived

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("SDTURBO_TEST_IMAGE", "localhost/sdturbo:cpu")
# The code the image is built from also builds the artifacts (`python -m` runs it from cwd).
CODE = Path(os.environ.get("SDTURBO_BUILD_CONTEXT", REPO))
NETWORK = "slirp4netns:allow_host_loopback=false,outbound_addr=127.0.0.1"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
PNG = b"\x89PNG\r\n\x1a\n"
# Small, warmed-up shapes: the test is about the container, not pixels.
SERVER_ENV = {"SDTURBO_WARMUP_SIZES": "64", "SDTURBO_MAX_BATCH_SIZE": "4"}
REQUEST = {"prompt": "a cat astronaut on the moon", "width": 64, "height": 64, "seed": 1}
STARTUP_TIMEOUT_S = 300

TOOLS = ("podman", "buildah", "runc", "debootstrap", "slirp4netns")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
# CI (ci.yml, .ci/run) sets CI_REQUIRE_ALL_TESTS=1: there a missing tool fails these tests
# instead of skipping them in silence.
pytestmark = [
    pytest.mark.container,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING) and os.environ.get("CI_REQUIRE_ALL_TESTS") != "1",
        reason=f"not installed: {', '.join(MISSING)} (.ci/run installs them)",
    ),
]


def test_the_container_tools_are_installed():
    assert not MISSING, f"not installed: {', '.join(MISSING)} (see container/README.md)"


def podman_env() -> dict[str, str]:
    # runc and no default ulimits: the settings that work on these machines (ENVIRONMENT.md).
    return {"CONTAINERS_CONF": str(REPO / "container" / "containers.conf"), **os.environ}


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env()
    )
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)}\n{proc.stderr[-3000:]}"
    return proc


def sagemaker_run_args(model_dir: Path) -> list[str]:
    """`podman run` options that reproduce a SageMaker endpoint's container. The host port is
    podman's pick (`127.0.0.1::8080`), read back with `podman port`: never probed."""
    env = [f"--env={key}={value}" for key, value in SERVER_ENV.items()]
    return [
        "--shm-size=64m",
        f"--network={NETWORK}",
        "--publish",
        "127.0.0.1::8080",
        "--volume",
        f"{model_dir}:/opt/ml/model:ro",
        *env,
    ]


class Container:
    """A detached `IMAGE serve` container and what was seen of /ping while it started."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self.name = f"sdturbo-test-{uuid.uuid4().hex[:8]}"
        self.url = ""
        self.ping_statuses: list[int] = []
        self.started = self.healthy_after_s = 0.0

    def start(self) -> None:
        """`podman run`, then poll /ping from the start until it answers 200."""
        self.started = time.monotonic()
        run_args = sagemaker_run_args(self.model_dir)
        podman("run", "--detach", "--name", self.name, *run_args, IMAGE, "serve")
        published = podman("port", self.name, "8080/tcp").stdout.split()[0]  # 127.0.0.1:NNNNN
        self.url = f"http://{published}"
        self.healthy_after_s = self._wait_healthy()

    def logs(self, last: int = 6000) -> str:
        proc = podman("logs", self.name, check=False)
        return (proc.stdout + proc.stderr)[-last:]

    def state(self) -> tuple[str, int]:
        out = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.name)
        status, code = out.stdout.split()
        return status, int(code)

    def _wait_healthy(self) -> float:
        deadline = self.started + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                self.ping_statuses.append(requests.get(self.url + "/ping", timeout=5).status_code)
            if self.ping_statuses and self.ping_statuses[-1] == 200:
                return time.monotonic() - self.started
            if self.state()[0] != "running":
                pytest.fail(f"container exited before it was healthy:\n{self.logs()}")
            time.sleep(0.1)
        pytest.fail(
            f"not healthy in {STARTUP_TIMEOUT_S} s: {self.ping_statuses[-5:]}\n{self.logs()}"
        )

    def invoke(self, **kwargs) -> requests.Response:
        return requests.post(self.url + "/invocations", timeout=120, **kwargs)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


# --- fixtures: the image, two artifacts, two running containers --------------------------------


@pytest.fixture(scope="module")
def image() -> str:
    env = podman_env()
    if "SDTURBO_BUILD_CONTEXT" in os.environ:  # e.g. a `git worktree` snapshot of HEAD
        env["BUILD_CONTEXT"] = os.environ["SDTURBO_BUILD_CONTEXT"]
    proc = subprocess.run(
        [str(REPO / "container" / "build.sh"), IMAGE],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    assert proc.returncode == 0, (
        f"image build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return IMAGE


def build_artifact(output: Path, *options: str) -> Path:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "optimize",
            "build",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--output",
            str(output),
            "--warmup-sizes",
            "64",
            "--batch-buckets",
            "1",
            *options,
        ],
        cwd=CODE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output.chmod(0o755)  # the container reads it as root; keep it readable whatever the umask
    return output


@pytest.fixture(scope="module")
def plain_artifact(tmp_path_factory) -> Path:
    return build_artifact(tmp_path_factory.mktemp("plain") / "model", "--no-compile")


@pytest.fixture(scope="module")
def compiled_artifact(image, tmp_path_factory) -> Path:
    """Compiled by ``optimize build`` inside the image, as the SageMaker build job does
    (optimize/sagemaker_job.py): its kernels fit the image's Python and compiler. A cache built
    on this host loads too, but the image then rebuilds its C++ kernels (warm-up 78 s against
    15 s here, idle), which a loaded host stretched past the 300 s health-check wait."""
    out = tmp_path_factory.mktemp("compiled")
    podman(
        "run", "--rm", "--network=none", "--volume", f"{out}:/out", "--entrypoint", "python",
        # One thread, as every process of the test run (tests/conftest.py): the other worker
        # fills the second core.
        "--env=OMP_NUM_THREADS=1",
        image, "-m", "optimize", "build", "--model", "tiny", "--device", "cpu",
        "--output", "/out/model", "--compile", "--compile-mode", "default",
        "--warmup-sizes", "64", "--batch-buckets", "1",
        # The UNet step only: what the image must show (a cache that fits it) in a third of
        # the compile time; tests/test_optimize.py covers every compiled part on the host.
        "--no-compile-vae-decoder", "--no-compile-text-encoder", "--no-image-to-image",
        timeout=900,
    )  # fmt: skip
    (out / "model").chmod(0o755)  # the serving container reads it as root, whatever the umask
    return out / "model"


def serving(model_dir: Path) -> Iterator[Container]:
    container = Container(model_dir)
    try:
        container.start()
        yield container
    finally:
        container.remove()


@pytest.fixture(scope="module")
def plain_server(image, plain_artifact) -> Iterator[Container]:
    yield from serving(plain_artifact)


@pytest.fixture(scope="module")
def compiled_server(image, compiled_artifact) -> Iterator[Container]:
    yield from serving(compiled_artifact)


# --- the image itself ----------------------------------------------------------------------------


def test_image_has_the_compiler_and_headers_and_names_its_device(image):
    script = (
        "import os, shutil, sysconfig; "
        "headers = sysconfig.get_paths()['include']; "
        "print(shutil.which('gcc'), shutil.which('g++'), "
        "os.path.isfile(os.path.join(headers, 'Python.h')), os.environ['SDTURBO_DEVICE'])"
    )
    out = podman("run", "--rm", "--network=none", "--entrypoint", "python", image, "-c", script)
    gcc, gxx, has_headers, device = out.stdout.split()
    assert gcc != "None" and gxx != "None" and has_headers == "True", out.stdout
    assert device == "cpu"  # this build's argument; the Dockerfile's default is cuda


def test_the_network_settings_leave_no_way_out(image):
    script = (
        "import socket\n"
        "for host in ('pypi.org', '151.101.0.223'):\n"
        "    try:\n"
        "        socket.create_connection((host, 443), timeout=5).close()\n"
        "        print('reached', host)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    out = podman(
        "run", "--rm", f"--network={NETWORK}", "--entrypoint", "python", image, "-c", script
    )
    assert "reached" not in out.stdout, out.stdout


def test_an_empty_model_dir_fails_fast_with_one_clear_line(image, tmp_path):
    empty = tmp_path / "model"
    empty.mkdir()
    name = f"sdturbo-test-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    try:
        run_args = sagemaker_run_args(empty)
        proc = podman(
            "run", "--rm", "--name", name, *run_args, image, "serve", timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail("still running 60 s after start with an empty /opt/ml/model")
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert proc.returncode != 0, output
    assert elapsed < 30, f"took {elapsed:.1f} s to fail"
    assert "Traceback" not in output, output
    assert len([line for line in lines if "/opt/ml/model" in line]) == 1, output
    assert len(lines) <= 3, output


# --- serving, as SageMaker calls it --------------------------------------------------------------


def test_plain_folder_turns_healthy(plain_server):
    assert plain_server.ping_statuses[-1] == 200
    print(f"plain folder: container start to /ping 200 in {plain_server.healthy_after_s:.1f} s")


def test_invocations_json(plain_server):
    response = plain_server.invoke(json=REQUEST, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert base64.b64decode(response.json()["image"]).startswith(PNG)


def test_invocations_raw_image_and_custom_attributes(plain_server):
    response = plain_server.invoke(
        json=REQUEST, headers={"Accept": "image/png", CUSTOM_ATTRIBUTES: "trace=abc,v=1"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG)
    assert response.headers.get(CUSTOM_ATTRIBUTES) == "trace=abc,v=1"


def test_invocations_text_plain(plain_server):
    response = plain_server.invoke(
        data="a red fox", headers={"Content-Type": "text/plain", "Accept": "image/png"}
    )
    assert response.status_code == 200, response.text
    assert response.content.startswith(PNG)


# The environment Ray's GCS server started with: what the cli set before ray.init.
GCS_ENVIRONMENT = """
import os
for pid in set(filter(str.isdigit, os.listdir("/proc"))) - {str(os.getpid())}:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"gcs_server" in f.read():
                with open(f"/proc/{pid}/environ", "rb") as f:
                    print(f.read().replace(b"\\0", b"\\n").decode(errors="replace"))
    except OSError:  # a process that ended meanwhile
        pass
"""


def test_ray_is_set_up_for_a_sagemaker_container(plain_server):
    """What `sdturbo serve` sets for Ray: checked from outside, all at once."""
    problems = []
    shm = podman("exec", plain_server.name, "df", "--output=size", "-k", "/dev/shm")
    if shm.stdout.split()[-1] != str(64 * 1024):
        problems.append(f"/dev/shm is not 64 MB: {shm.stdout!r}")
    if "instead of /dev/shm" in plain_server.logs(last=10**7):
        problems.append("Ray chose the object store's place by itself (64 MB /dev/shm warning)")
    processes = podman("top", plain_server.name, "args").stdout
    if "haproxy" not in processes:
        problems.append("no HAProxy ingress process (RAY_SERVE_ENABLE_HA_PROXY)")
    # Ray always starts its API-server process (dashboard.py); include_dashboard=False only
    # leaves out the dashboard's modules and web server (ray/_private/services.py).
    probe = "import socket; socket.create_connection(('127.0.0.1', 8265), timeout=2)"
    if podman("exec", plain_server.name, "python", "-c", probe, check=False).returncode == 0:
        problems.append("something answers on the dashboard's port 8265")
    if (
        "RAY_USAGE_STATS_ENABLED=0"
        not in podman("exec", plain_server.name, "python", "-c", GCS_ENVIRONMENT).stdout.split()
    ):
        problems.append("usage stats not off (RAY_USAGE_STATS_ENABLED=0 in Ray's environment)")
    assert not problems, "\n".join(problems)


def test_sigterm_completes_in_flight_requests_refuses_new_ones_and_exits_0(plain_server):
    """`podman stop` is what SageMaker does: SIGTERM, then SIGKILL 30 s later."""
    # Enough work to still be running when SIGTERM arrives: 8 requests x 4 images x 4 steps.
    slow = {**REQUEST, "width": 256, "height": 256, "num_inference_steps": 4, "num_images": 4}
    # One alone first: admission then knows this size's cost, not only the 64x64 one's
    # (serve_app/engine/admission.py), and admits all eight below whatever the machine's speed
    # (learnt from 64x64 calls alone, a loaded host's estimate once shed two of them).
    assert plain_server.invoke(json=slow).status_code == 200
    with ThreadPoolExecutor(max_workers=8) as pool:
        in_flight = [pool.submit(plain_server.invoke, json=slow) for _ in range(8)]
        # Every request accepted (one replica: /ping counts them) before SIGTERM, not a guess,
        # and work still running when it comes.
        assert wait_until_all_arrived(plain_server.url, in_flight) >= 1
        stopped: dict[str, float] = {}

        def stop() -> None:
            start = time.monotonic()
            podman("stop", "--time", "30", plain_server.name, timeout=60)
            stopped["after_s"] = time.monotonic() - start

        def draining() -> bool:
            try:
                return requests.get(plain_server.url + "/ping", timeout=5).status_code == 503
            except requests.ConnectionError:
                return True  # already closed: refused either way
            except requests.Timeout:
                return False

        stopper = threading.Thread(target=stop)
        stopper.start()
        # SIGTERM has arrived when /ping says so: podman delivers it in its own time (a fixed
        # 0.5 s was once too short on a loaded host, and the late request was served).
        wait_for(draining, timeout_s=30)
        late_status = None
        with contextlib.suppress(requests.ConnectionError):
            late_status = plain_server.invoke(json=REQUEST).status_code
        statuses = [future.result().status_code for future in in_flight]
        stopper.join(timeout=90)
    logs = plain_server.logs()
    assert statuses == [200] * 8, f"{statuses}\n{logs}"
    assert late_status in (None, 503), f"a request after SIGTERM got {late_status}"
    assert plain_server.state() == ("exited", 0), logs
    assert stopped["after_s"] < 30, f"exited {stopped['after_s']:.1f} s after SIGTERM"
    print(f"SIGTERM to exit 0 in {stopped['after_s']:.1f} s, 8 in-flight requests completed")


def test_compile_cache_artifact_is_unhealthy_until_warm_then_serves(compiled_server):
    statuses = compiled_server.ping_statuses
    assert 503 in statuses and statuses[-1] == 200, statuses[-10:]
    response = compiled_server.invoke(json=REQUEST, headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    assert response.content.startswith(PNG)
    # Built in the image, the cache fits it: compiled, no fallback (the image sets
    # SDTURBO_COMPILE_CACHE_MISS=eager, so a cache that did not fit would say "fallback").
    compile = requests.get(compiled_server.url + "/ping", timeout=5).json()["compile"]
    assert compile["state"] == "compiled", compile
    print(
        f"compile-cache artifact: container start to /ping 200 in "
        f"{compiled_server.healthy_after_s:.1f} s; compile {compile}"
    )
