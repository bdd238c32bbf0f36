"""Container-engine helpers for the image tests: find a working engine, build, run, clean up.

The development and CI machines have no Docker daemon and pull no image; podman with a base image
built from Debian packages (``scripts/container-engine-setup.sh``) builds and runs the images
there. A machine with a working Docker daemon and a registry uses the default base image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_BASE_IMAGE = "localhost/python-base:3.11-bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: The images' non-root user and group.
IMAGE_UID = 10001
#: ``run`` options that harden a container the way the Kubernetes manifests run it.
HARDENED = (
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
)


def readable_copy(src: Path, dst: Path) -> Path:
    """Copy a folder with world-readable modes (pytest's temp dirs are 0700 root), for a mount."""
    shutil.copytree(src, dst)
    dst.chmod(0o755)
    for path in dst.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def writable_dir(path: Path) -> Path:
    """Create ``path`` writable by the images' user (a mounted data folder)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


@dataclass
class Engine:
    """A working container engine CLI and how to build with it on this machine."""

    cli: str
    base_image: str | None
    build_args: list[str] = field(default_factory=list)

    def run(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<cli> args...`` and return the finished process (text output captured)."""
        return subprocess.run(
            [self.cli, *args], capture_output=True, text=True, timeout=timeout, check=check
        )

    def build(
        self, dockerfile: str, tag: str, extra_args: list[str] | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        """Build ``dockerfile`` (relative to the repository root) with the root as context."""
        args = ["build", "-f", dockerfile, "-t", tag, *self.build_args, *(extra_args or [])]
        if self.base_image:
            args += ["--build-arg", f"BASE_IMAGE={self.base_image}"]
        result = subprocess.run(
            [self.cli, *args, str(REPO_ROOT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{self.cli} build -f {dockerfile} failed:\n{result.stdout[-4000:]}"
                f"\n{result.stderr[-4000:]}"
            )
        return result


def _works(cli: str) -> bool:
    if shutil.which(cli) is None:
        return False
    try:
        return (
            subprocess.run([cli, "info"], capture_output=True, timeout=60, check=False).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine() -> Engine | str:
    """The engine to use, or the reason there is none (for ``pytest.skip``).

    ``CONTAINER_ENGINE`` (docker or podman) picks one; otherwise a working Docker daemon wins,
    then podman. ``GARBAGE_BASE_IMAGE`` overrides the base image; podman without registry access
    uses the local Debian-built base image when it exists.
    """
    wanted = os.environ.get("CONTAINER_ENGINE")
    candidates = [wanted] if wanted else ["docker", "podman"]
    cli = next((c for c in candidates if _works(c)), None)
    if cli is None:
        return (
            f"no working container engine ({' or '.join(candidates)} info failed or is not "
            "installed); run scripts/container-engine-setup.sh (podman) or start Docker"
        )
    base = os.environ.get("GARBAGE_BASE_IMAGE")
    build_args: list[str] = []
    if cli == "podman":
        build_args += ["--network", "host"]
        if CA_BUNDLE.is_file():
            # Builds reach PyPI through this machine's (possibly TLS-inspecting) proxy.
            build_args += [
                "-v",
                f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
                "--build-arg",
                f"PIP_CERT={CA_BUNDLE}",
            ]
        if base is None:
            has_local = (
                subprocess.run(
                    ["podman", "image", "exists", LOCAL_BASE_IMAGE],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            )
            if not has_local:
                return (
                    f"podman works but the base image {LOCAL_BASE_IMAGE} is missing and no "
                    "registry may be reachable; run scripts/container-engine-setup.sh"
                )
            base = LOCAL_BASE_IMAGE
    return Engine(cli=cli, base_image=base, build_args=build_args)
