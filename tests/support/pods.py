"""Test scaffolding, not product: images built with buildah and run as Kubernetes would run a pod,
without a container engine (none runs here, and `podman run` is refused by the sandbox).

- `build_image`: `buildah bud --isolation chroot` of one of our Dockerfiles, with this machine's
  CA bundle and a pip.conf naming it lent to the build (pip reaches the index only through them
  here; real users' builds need neither, so they stay out of the Dockerfiles).
- `ImageRoot`: the image's root filesystem (a buildah working container, mounted), with the mount
  points a pod's volumes need made in it, as the container runtime makes them.
- `Network`: network namespaces on one bridge (itself in a namespace of its own), one per pod,
  each with its own address; nothing between pods goes over loopback.
- `Pod`: one process tree in a mount, UTS and PID namespace of its own, in its network namespace
  and with its name as hostname: the image root bound read-only (`readOnlyRootFilesystem`),
  tmpfs for emptyDirs, bind mounts for PVCs and read-only volumes, then chroot as uid 1000,
  gid 100 with no new privileges and the image's environment plus the container's. Stopping a
  pod kills its PID namespace's init, so the kernel kills everything in it, as deleting a pod
  does.

Everything made here is named with the test's own prefix and removed by it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

POD_USER = "1000:100"  # the manifests' runAsUser / runAsGroup


def _run(*argv: str, timeout: float = 120) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed: {done.stderr[-2000:]}")
    return done.stdout.strip()


def build_image(repo: Path, dockerfile: str, tag: str, base: str, log: Path) -> float:
    """Builds `dockerfile` (relative to `repo`) as `tag` FROM `base`; returns the seconds taken."""
    with tempfile.TemporaryDirectory(prefix="lushpo-pip-") as tmp:
        pip_conf = Path(tmp) / "pip.conf"
        pip_conf.write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        started = time.monotonic()
        with log.open("w") as out:
            done = subprocess.run(
                [
                    "buildah",
                    "bud",
                    "--isolation",
                    "chroot",
                    "--layers",
                    "--build-arg",
                    f"BASE_IMAGE={base}",
                    "-v",
                    "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
                    "-v",
                    f"{pip_conf}:/etc/pip.conf:ro",
                    "-f",
                    dockerfile,
                    "-t",
                    tag,
                    ".",
                ],
                cwd=repo,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
                check=False,
            )
    if done.returncode != 0:
        raise RuntimeError(f"buildah bud {dockerfile} failed:\n{log.read_text()[-4000:]}")
    return time.monotonic() - started


def image_size(tag: str) -> str:
    """The image's size as `buildah images` prints it (e.g. '3.85 GB')."""
    return str(json.loads(_run("buildah", "images", "--json", tag))[0]["size"])


class ImageRoot:
    """The image's root filesystem, mounted from a buildah working container."""

    def __init__(self, image: str):
        config = json.loads(_run("buildah", "inspect", "--type", "image", image))["OCIv1"]["config"]
        self.env = dict(item.split("=", 1) for item in config.get("Env", []))
        self.workdir = config.get("WorkingDir") or "/"
        self.container = _run("buildah", "from", "--pull-never", image)
        self.path = Path(_run("buildah", "mount", self.container))

    def mount_points(self, *targets: str) -> None:
        """Creates a volume's mount point in the image, as the runtime does before the pod runs."""
        for target in targets:
            (self.path / target.lstrip("/")).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            _run("buildah", "umount", self.container)
        with contextlib.suppress(RuntimeError):
            _run("buildah", "rm", self.container)


class Network:
    """Network namespaces joined by a bridge in a namespace of its own: one pod network."""

    def __init__(self, subnet: str = "10.250.0"):
        self.tag = "lp" + secrets.token_hex(3)  # interface names have at most 15 characters
        self.subnet = subnet
        self.bridge = f"{self.tag}-br"
        self.namespaces: list[str] = []
        _run("ip", "netns", "add", self.bridge)
        self.namespaces.append(self.bridge)
        _run("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.bridge, "link", "set", "br0", "up")

    def add(self, name: str) -> tuple[str, str]:
        """A namespace with its own address on the bridge: (namespace, address)."""
        index = len(self.namespaces)
        namespace, address = f"{self.tag}-{name}", f"{self.subnet}.{index}"
        pod_end, bridge_end = f"{self.tag}p{index}", f"{self.tag}b{index}"
        _run("ip", "netns", "add", namespace)
        self.namespaces.append(namespace)
        _run("ip", "link", "add", pod_end, "type", "veth", "peer", "name", bridge_end)
        _run("ip", "link", "set", pod_end, "netns", namespace)
        _run("ip", "link", "set", bridge_end, "netns", self.bridge)
        _run("ip", "-n", self.bridge, "link", "set", bridge_end, "master", "br0", "up")
        _run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", pod_end)
        _run("ip", "-n", namespace, "link", "set", pod_end, "up")
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        return namespace, address

    def close(self) -> None:
        for namespace in reversed(self.namespaces):
            with contextlib.suppress(RuntimeError):
                _run("ip", "netns", "del", namespace)


@dataclass
class Pod:
    """One container of a pod. `volumes`: target -> (host path, read_only); `empty_dirs`: tmpfs
    targets; `env`: the container's environment on top of the image's."""

    name: str
    root: ImageRoot
    command: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, tuple[Path, bool]] = field(default_factory=dict)
    empty_dirs: tuple[str, ...] = ("/tmp", "/dev/shm")
    namespace: str | None = None
    process: subprocess.Popen | None = None
    _mount_root: Path | None = None

    def _script(self, mount_root: Path) -> str:
        image, root = shlex.quote(str(self.root.path)), shlex.quote(str(mount_root))
        lines = [
            "set -eu",
            f"hostname {shlex.quote(self.name)}",  # a pod's hostname is its own name
            f"mount --bind {image} {root}",
            f"mount -o remount,bind,ro {root}",  # readOnlyRootFilesystem: true
            f"mount -t proc proc {root}/proc",
            f"mount --rbind /dev {root}/dev",
        ]
        for target in self.empty_dirs:
            lines.append(f"mount -t tmpfs -o mode=1777 tmpfs {root}{shlex.quote(target)}")
        for target, (source, read_only) in sorted(self.volumes.items()):  # parents first
            dest = f"{root}{shlex.quote(target)}"
            lines.append(f"mount --bind {shlex.quote(str(source))} {dest}")
            if read_only:
                lines.append(f"mount -o remount,bind,ro {dest}")
        env = self.root.env | self.env
        assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
        command = " ".join(shlex.quote(c) for c in self.command)
        lines.append(
            f"exec setpriv --no-new-privs chroot --userspec={POD_USER} --groups=100 {root} "
            f"env -i {assignments} sh -c {shlex.quote(f'cd {self.root.workdir} && exec {command}')}"
        )
        return "\n".join(lines)

    def _make_mount_points(self) -> None:
        """Each target in the volume that holds it, else in the image (as the runtime does)."""
        for target in (*self.empty_dirs, *self.volumes):
            parents = [v for v in self.volumes if target.startswith(v.rstrip("/") + "/")]
            if parents:
                holder = max(parents, key=len)
                inside = self.volumes[holder][0] / target[len(holder) :].lstrip("/")
                inside.mkdir(parents=True, exist_ok=True)
            else:
                self.root.mount_points(target)

    def start(self) -> Pod:
        self._make_mount_points()
        mount_root = self._mount_root = Path(tempfile.mkdtemp(prefix=f"lushpo-pod-{self.name}-"))
        # --kill-child ends the pod with a test that dies before its init drops to uid 1000 (the
        # change of uid clears the parent-death signal; `stop` then kills the init by PID).
        argv = [
            "unshare",
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--propagation",
            "private",
            "sh",
            "-c",
            self._script(mount_root),
        ]
        if self.namespace:
            argv = ["ip", "netns", "exec", self.namespace, *argv]
        out = self.log.open("ab")
        self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return self

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Deletes the pod: SIGKILL to its PID namespace, everything in it dies with it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            # `ip netns exec` execs unshare, so the Popen's PID is unshare's own; its child is the
            # PID namespace's init (the parent-death signal of --kill-child does not survive the
            # change to uid 1000, so the init is killed by PID).
            pid = self.process.pid
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                    os.kill(int(child), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(60)
        with contextlib.suppress(OSError):
            self._mount_root.rmdir()  # its mounts went with the pod's mount namespace

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
