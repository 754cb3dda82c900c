"""The local two-node Slurm cluster for the tests marked `slurm`: started once per session through the project's
script (needs root and apt-get, or Slurm already installed) and stopped afterwards; skipped with the reason when it
cannot be had, except under CI (CI=true), where a cluster that fails to start fails the tests."""

import os
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local-cluster.sh"


def _free_port_block() -> int:
    """A base port P with P, P+1 (slurmctld, slurmd) and P+11, P+12 (the two nodes) free: several test sessions
    (other engineers on this machine) can each run a cluster."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        try:
            for offset in (0, 1, 11, 12):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports for the local Slurm cluster")


@pytest.fixture(scope="session")
def slurm_cluster():
    """Yields the environment (SLURM_CONF set) for a fresh 2-node cluster n1, n2."""
    if os.environ.get("OLMO_SKIP_SLURM"):
        pytest.skip("OLMO_SKIP_SLURM is set")
    have_slurm = shutil.which("slurmctld") and shutil.which("munged")
    if not have_slurm and (os.geteuid() != 0 or not shutil.which("apt-get")):
        pytest.skip("Slurm is not installed and cannot be: scripts/local-cluster.sh needs root and apt-get")
    # munged insists that every parent of its socket is world-searchable: pytest's own tmp dirs are 0700
    root = Path(tempfile.mkdtemp(prefix="olmo-local-slurm-", dir="/tmp"))
    root.chmod(0o755)
    port = os.environ.get("OLMO_SLURM_PORT") or str(_free_port_block())
    env = {**os.environ, "SLURM_LOCAL_ROOT": str(root), "SLURM_LOCAL_PORT": port}
    proc = subprocess.run(["bash", str(SCRIPT), "start", "2"], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
        reason = f"the local Slurm cluster did not start (exit {proc.returncode}): {proc.stderr[-800:]}"
        if os.environ.get("CI"):  # CI runs as root with apt: there a cluster that cannot start is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    env["SLURM_CONF"] = str(root / "etc" / "slurm.conf")
    try:
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
