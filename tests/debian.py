"""Debian packages some tests need (openssh-server, chromium, slurm-wlm), installed when missing (as
root), one apt-get at a time: under pytest-xdist two workers' apt-gets would collide on dpkg's lock, so
every install takes APT_LOCK first (tests/cluster/cluster.sh takes it too, with flock(1))."""
from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile

APT_LOCK = os.path.join(tempfile.gettempdir(), "metalearn-tests-apt.lock")


def apt_install(*packages: str) -> subprocess.CompletedProcess:
    """apt-get install the packages (apt-get update first when the lists are stale); the result."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    with open(APT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return done
