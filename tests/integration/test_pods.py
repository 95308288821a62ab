"""The CPU image built from deploy/Dockerfile.cpu, and run as the k8s manifests run it.

The image is built with buildah on the Debian stand-in base (deploy/standin-base.sh: the official
rayproject/ray image cannot be pulled here). Its pods (tests/support/pods.py) run as uid 1000,
gid 100, with the image's root filesystem read-only and writable only what the rendered manifests
mount: their emptyDirs (tmpfs) and the work PVC (a folder of the test's).

a. The pipeline in a pod: `lushpo run` as the RayJob's entrypoint calls it, on a local Ray
   instance, the shared data mounted read-only; it writes its export to the work PVC.
b. The RayJob's flow on two pods: a head (`num-cpus 0`) and a worker, each in its own network
   namespace with its own address on a bridge, token authentication on with the token from the
   Secret, an S3 endpoint (moto) in a third namespace. A submitter pod submits the rendered
   RayJob's own entrypoint to the head's job API; the features are extracted on the worker and
   the study, export and report land in S3 (LUSHPO_RESULTS_DIR an s3:// prefix).
c. KubeRay's retry: both pods are deleted mid-study, a fresh pair starts (a new cluster, as the
   RayJob's backoffLimit makes one) and the job is submitted again: the study resumes from S3 and
   ends with exactly its budget."""

from __future__ import annotations

import json
import os
import re
import secrets as random_tokens
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, REQUIRE_SHARED
from tests.deploy_tests.conftest import find, render
from tests.deploy_tests.test_rayjob_entrypoint import container_environment
from tests.support.pods import ImageRoot, Network, Pod, build_image, image_size
from tests.support.ray_cli import budget_states, complete_trials

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.image]

BASE = "localhost/lushpo-standin-base:bookworm"
IMAGE = "localhost/lushpo:test-cpu"
BUCKET = "lushpo-pods"
TRIALS = 4
WEIGHTS = "xception_imagenet_notop.h5"
VENV_BIN = Path(sys.executable).parent  # the test's own tools (moto, ray CLI) in a namespace


def secrets_token() -> str:
    return random_tokens.token_hex(32)  # as `openssl rand -hex 32` in k8s/secret.example.yaml


def _need(tool: str) -> None:
    """In CI a missing tool fails the test; elsewhere (a laptop without buildah) it skips."""
    if shutil.which(tool) is None:
        message = f"{tool} is not installed (.ci/run installs buildah, debootstrap, iproute2)"
        if REQUIRE_SHARED:
            pytest.fail(message)
        pytest.skip(message)
    if os.geteuid() != 0:
        message = "the image test runs pods with mount and network namespaces: run it as root"
        if REQUIRE_SHARED:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def cpu_image(tmp_path_factory) -> str:
    """The CPU image from the real Dockerfile (buildah's layer cache makes a rebuild cheap)."""
    for tool in ("buildah", "debootstrap", "ip", "unshare", "setpriv"):
        _need(tool)
    logs = tmp_path_factory.mktemp("build")
    if (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", BASE], capture_output=True, check=False
        ).returncode
        != 0
    ):
        done = subprocess.run(
            [str(REPO / "deploy" / "standin-base.sh"), BASE],
            text=True,
            capture_output=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    seconds = build_image(REPO, "deploy/Dockerfile.cpu", IMAGE, BASE, logs / "cpu.log")
    print(f"cpu image: {image_size(IMAGE)}, built in {seconds:.0f} s")
    return IMAGE


@pytest.fixture
def image_root(cpu_image):
    root = ImageRoot(cpu_image)
    yield root
    root.close()


@pytest.fixture
def network():
    net = Network()
    yield net
    net.close()


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(render("cpu")) if d]


def _cluster_spec(docs) -> dict:
    return find(docs, "RayJob")["spec"]


def _study(folder: Path) -> Path:
    """The study ConfigMap's file, swapped for a tiny study on the paper's split."""
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "feature_set": {"backbone": "xception", "frames": 2, "sampling": "even"},
                "split": {"kind": "paper"},
                "space": {
                    "lstm_units": [8, 16],
                    "dense_layers": 1,
                    "dense_units_1": [8, 16],
                    "batch_size": [16],
                },
                "budget": {"trials": TRIALS, "max_concurrent": 1, "max_epochs": 2, "patience": 2},
                "searcher": {"sampler": "tpe", "seed": 0},
                "resources": {"cpu": 1, "intra_op_threads": 1},
            }
        )
    )
    return folder


def _work(path: Path) -> Path:
    """A PersistentVolume as the pods see it: owned by the pods' fsGroup."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 1000, 100)
    return path


def _volumes(spec: dict, container: dict, claims: dict[str, Path], config_maps: dict[str, Path]):
    """The container's volumeMounts as (empty_dirs, volumes): emptyDirs become tmpfs, PVCs and
    ConfigMaps the test's folders (ConfigMaps read-only). A kind of volume the test does not know
    fails the test: it would be a writable path the pods get that this check never saw."""
    by_name = {v["name"]: v for v in spec["volumes"]}
    empty_dirs, volumes = [], {}
    for mount in container["volumeMounts"]:
        volume = by_name[mount["name"]]
        if "emptyDir" in volume:
            empty_dirs.append(mount["mountPath"])
        elif "persistentVolumeClaim" in volume:
            source = claims[volume["persistentVolumeClaim"]["claimName"]]
            volumes[mount["mountPath"]] = (source, bool(mount.get("readOnly")))
        elif "configMap" in volume:
            volumes[mount["mountPath"]] = (config_maps[volume["configMap"]["name"]], True)
        else:
            pytest.fail(f"volume {mount['name']} is of a kind the pod test does not mount")
    return tuple(empty_dirs), volumes


def _kuberay_auth(rayjob: dict, secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """What KubeRay's authOptions adds to every Ray container's environment."""
    auth = rayjob["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token", auth
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets[(auth["secretName"], "auth_token")]}


def _ray_start(params: dict, *extra: str) -> list[str]:
    """`ray start` as KubeRay writes it from rayStartParams, in the foreground (--block)."""
    return ["ray", "start", *(f"--{k}={v}" for k, v in params.items()), *extra, "--block"]


# --- a. the pipeline in a pod ------------------------------------------------------------------


def test_lushpo_run_in_one_pod_read_only_as_uid_1000(
    image_root, network, shared_data_dir, xception_weights, tmp_path
):
    docs = _docs()
    rayjob = _cluster_spec(docs)
    head = rayjob["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    container = head["containers"][0]
    work = _work(tmp_path / "work")
    empty_dirs, volumes = _volumes(
        head, container, {"lushpo-work": work}, {"lushpo-study": _study(tmp_path / "study")}
    )
    volumes["/var/lib/lushpo/data"] = (shared_data_dir, True)
    volumes["/var/lib/lushpo/weights"] = (xception_weights.parent, True)
    local = {
        "LUSHPO_STORE": "/var/lib/lushpo/store",
        "LUSHPO_STORAGE_PATH": "/var/lib/lushpo/runs",
        "LUSHPO_STUDY": "tiny",
        "LUSHPO_WEIGHTS": f"/var/lib/lushpo/weights/{xception_weights.name}",
    }
    secrets = {
        ("lushpo-s3", "AWS_ACCESS_KEY_ID"): "unused",
        ("lushpo-s3", "AWS_SECRET_ACCESS_KEY"): "unused",
        ("lushpo-optuna", "url"): "sqlite:////var/lib/lushpo/optuna.db",
        ("lushpo-ray-token", "auth_token"): secrets_token(),
    }
    env = container_environment(docs, container, secrets, local) | _kuberay_auth(rayjob, secrets)
    # The RayJob's entrypoint with a Ray instance of its own instead of joining the cluster.
    entrypoint = rayjob["entrypoint"].replace(" --address auto", "")
    namespace, _ = network.add("a")
    pod = Pod(
        "a",
        image_root,
        shlex.split(entrypoint),
        tmp_path / "a.log",
        env,
        volumes,
        empty_dirs,
        namespace,
    )
    started = time.monotonic()
    pod.start()
    try:
        code = pod.wait(900)
    finally:
        pod.stop()
    print(f"pod a: lushpo run in {time.monotonic() - started:.0f} s")
    assert code == 0, pod.output()[-6000:]
    export = work / "results" / "tiny"
    card = json.loads((export / "model_card.json").read_text())
    assert card["backbone"] == "xception" and card["frames"] == 2
    assert json.loads((export / "report.json").read_text())
    assert budget_states(work / "optuna.db") == ["COMPLETE"] * TRIALS
    mount_points = {work / "data", work / "weights"}  # the test's, made as the runtime does
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in work.rglob("*") if p not in mount_points}
    assert owners == {(1000, 100)}, f"files of other owners on the work volume: {owners}"


# --- b and c. the RayJob's flow on a head and a worker pod, then KubeRay's retry ----------------


class _S3:
    """moto's server in a namespace of its own; the test reads it from inside that namespace."""

    def __init__(self, network: Network, log: Path):
        self.namespace, address = network.add("s3")
        self.url = f"http://{address}:9000"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(log.parent),
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        with log.open("wb") as out:
            self.server = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.namespace,
                    str(VENV_BIN / "moto_server"),
                    "-H",
                    "0.0.0.0",
                    "-p",
                    "9000",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _run(self, code: str) -> subprocess.CompletedProcess:
        script = f"import boto3, json\ns3 = boto3.client('s3')\n{code}"
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", script],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def python(self, code: str) -> str:
        """Runs `code` with boto3 in the endpoint's namespace; `s3` is a client of it."""
        done = self._run(code)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def answers(self) -> bool:
        return self._run("s3.list_buckets()").returncode == 0

    def keys(self, prefix: str) -> list[str]:
        return json.loads(
            self.python(
                f"pages = s3.get_paginator('list_objects_v2').paginate(Bucket={BUCKET!r}, "
                f"Prefix={prefix!r})\nprint(json.dumps([o['Key'] for p in pages "
                "for o in p.get('Contents', [])]))"
            )
        )

    def stop(self) -> None:
        self.server.kill()
        self.server.wait(30)


class _JobAPI:
    """The head's job API as seen from the submitter's namespace, with the cluster's token."""

    def __init__(self, namespace: str, head: str, token: str, home: Path):
        self.namespace, self.address = namespace, f"http://{head}:8265"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
        }

    def ray(self, *args: str) -> str:
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.namespace,
                str(VENV_BIN / "ray"),
                *args,
                "--address",
                self.address,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return done.stdout + done.stderr

    def status(self, job: str) -> str:
        """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED, as `ray job status` words them."""
        out = re.sub(r"\x1b\[[0-9;]*m", "", self.ray("job", "status", job))
        ended = re.search(rf"Job '{job}' (succeeded|failed|was stopped)", out)
        if ended:
            return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[
                ended.group(1)
            ]
        match = re.search(rf"Status for job '{job}': (\w+)", out)
        return match.group(1) if match else out

    def logs(self, job: str) -> str:
        return self.ray("job", "logs", job)

    def nodes(self) -> list[dict]:
        """The cluster's nodes; none while the head's dashboard does not answer yet."""
        self.last = self.ray("list", "nodes", "--format", "json")
        start = re.search(r"^\[", self.last, re.MULTILINE)
        return json.loads(self.last[start.start() :]) if start else []


def _wait(condition, timeout: float, what: str, logs) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s; job logs:\n{logs()[-4000:]}")
        time.sleep(2)


def test_rayjob_on_two_pods_over_a_pod_network_then_kuberay_retry_resumes_from_s3(
    image_root, network, shared_data_dir, xception_weights, tmp_path
):
    docs = _docs()
    rayjob = _cluster_spec(docs)
    cluster = rayjob["rayClusterSpec"]
    head_spec = cluster["headGroupSpec"]["template"]["spec"]
    worker_spec = cluster["workerGroupSpecs"][0]["template"]["spec"]
    submitter_spec = rayjob["submitterPodTemplate"]["spec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"

    s3 = _S3(network, tmp_path / "s3.log")
    head_ns, head_ip = network.add("head")
    worker_ns, worker_ip = network.add("worker")
    submit_ns, _ = network.add("submit")
    try:
        _wait(s3.answers, 60, "moto did not start", lambda: "")
        s3.python(
            f"s3.create_bucket(Bucket={BUCKET!r})\n"
            f"s3.upload_file({str(xception_weights)!r}, {BUCKET!r}, 'weights/{WEIGHTS}')"
        )
        token = secrets_token()
        secrets = {
            ("lushpo-s3", "AWS_ACCESS_KEY_ID"): "testing",
            ("lushpo-s3", "AWS_SECRET_ACCESS_KEY"): "testing",
            ("lushpo-optuna", "url"): "sqlite:////var/lib/lushpo/optuna.db",
            ("lushpo-ray-token", "auth_token"): token,
        }
        # The test's ConfigMap: the S3 endpoint, bucket and weights of this test.
        config = {
            "AWS_ENDPOINT_URL": s3.url,
            "LUSHPO_STORE": f"s3://{BUCKET}/store",
            "LUSHPO_STORAGE_PATH": f"s3://{BUCKET}/runs",
            "LUSHPO_STUDY": "tiny",
            "LUSHPO_WEIGHTS": f"s3://{BUCKET}/weights/{WEIGHTS}",
            "LUSHPO_RESULTS_DIR": f"s3://{BUCKET}/results",  # export and report land in S3
        }
        auth = _kuberay_auth(rayjob, secrets)
        work = _work(tmp_path / "work")
        study = _study(tmp_path / "study")

        def start_pair(attempt: int) -> tuple[Pod, Pod]:
            container = head_spec["containers"][0]
            empty, volumes = _volumes(
                head_spec, container, {"lushpo-work": work}, {"lushpo-study": study}
            )
            volumes["/var/lib/lushpo/data"] = (shared_data_dir, True)
            env = container_environment(docs, container, secrets, config) | auth
            params = cluster["headGroupSpec"]["rayStartParams"]
            head = Pod(
                f"head{attempt}",
                image_root,
                _ray_start(params, "--head", "--port=6379", f"--node-ip-address={head_ip}"),
                tmp_path / f"head{attempt}.log",
                env,
                volumes,
                empty,
                head_ns,
            )
            container = worker_spec["containers"][0]
            empty, volumes = _volumes(worker_spec, container, {}, {})
            env = container_environment(docs, container, secrets, config) | auth
            cpus = container["resources"]["limits"]["cpu"]  # KubeRay's num-cpus from the limit
            params = cluster["workerGroupSpecs"][0]["rayStartParams"]
            worker = Pod(
                f"worker{attempt}",
                image_root,
                _ray_start(
                    params,
                    f"--address={head_ip}:6379",
                    f"--num-cpus={cpus}",
                    f"--node-ip-address={worker_ip}",
                ),
                tmp_path / f"worker{attempt}.log",
                env,
                volumes,
                empty,
                worker_ns,
            )
            head.start()
            worker.start()
            return head, worker

        def submit(job: str) -> None:
            """KubeRay's submitter pod: the entrypoint pasted into its own shell line."""
            container = submitter_spec["containers"][0]
            empty, volumes = _volumes(submitter_spec, container, {}, {})
            env = container_environment(docs, container, secrets)
            line = (
                f"ray job submit --address http://{head_ip}:8265 --submission-id {job} "
                f"--no-wait -- {rayjob['entrypoint']}"
            )
            pod = Pod(
                f"submit-{job}",
                image_root,
                ["bash", "-c", line],
                tmp_path / f"{job}.log",
                env,
                volumes,
                empty,
                submit_ns,
            ).start()
            try:
                assert pod.wait(180) == 0, pod.output()[-3000:]
            finally:
                pod.stop()

        api = _JobAPI(submit_ns, head_ip, token, tmp_path)
        optuna_db = work / "optuna.db"
        started = time.monotonic()
        head, worker = start_pair(1)
        try:
            _wait(
                lambda: len([n for n in api.nodes() if n.get("state") == "ALIVE"]) == 2,
                180,
                "the worker did not join the head",
                lambda: api.last + head.output() + worker.output(),
            )
            submit("lushpo-study-1")
            logs1 = lambda: api.logs("lushpo-study-1")  # noqa: E731
            _wait(
                lambda: (
                    complete_trials(optuna_db) >= 1
                    or api.status("lushpo-study-1") in ("FAILED", "SUCCEEDED")
                ),
                900,
                "no trial finished",
                logs1,
            )
            assert complete_trials(optuna_db) < TRIALS, logs1()[-3000:]
            first = logs1()
            nodes = {n["node_ip"]: n["node_id"] for n in api.nodes()}
        finally:
            head.stop()  # KubeRay's retry: the failed attempt's cluster is deleted...
            worker.stop()
        stored = re.search(r"stored (\S+): \S+ on node\(s\) (\S+)", first)
        assert stored, first[-3000:]
        assert nodes[worker_ip].startswith(stored.group(2)), (nodes, stored.group(0))

        head, worker = start_pair(2)  # ...and a new one made, which gets the same job
        try:
            _wait(
                lambda: len([n for n in api.nodes() if n.get("state") == "ALIVE"]) == 2,
                180,
                "the new worker did not join",
                lambda: head.output() + worker.output(),
            )
            submit("lushpo-study-2")
            _wait(
                lambda: api.status("lushpo-study-2") in ("SUCCEEDED", "FAILED"),
                900,
                "the resubmitted job did not end",
                lambda: api.logs("lushpo-study-2"),
            )
            second = api.logs("lushpo-study-2")
            assert api.status("lushpo-study-2") == "SUCCEEDED", second[-4000:]
        finally:
            head.stop()
            worker.stop()
        print(f"pods b+c: two attempts in {time.monotonic() - started:.0f} s")
        assert "found in store" in second, "the second attempt extracted again"
        assert budget_states(optuna_db) == ["COMPLETE"] * TRIALS
        assert any(k.endswith("features.npy") for k in s3.keys("store/"))
        assert s3.keys("runs/tiny/"), "no run storage in S3"
        published = s3.keys("results/tiny/")
        assert {"results/tiny/model_card.json", "results/tiny/report.json",
                "results/tiny/model.h5"} <= set(published), published  # fmt: skip
        card = json.loads(s3.python(
            f"print(s3.get_object(Bucket={BUCKET!r}, Key='results/tiny/model_card.json')"
            "['Body'].read().decode())"))  # fmt: skip
        assert card["frames"] == 2 and card["backbone"] == "xception"
    finally:
        s3.stop()
