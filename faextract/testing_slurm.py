"""A one-node SLURM on localhost, for testing the batch jobs against the real thing.

Needs Debian's ``slurmctld slurmd slurm-client munge`` (SLURM 22.05) and root. Starts munged
(as the munge user), slurmctld and slurmd with a cgroup-free ``slurm.conf`` in a temporary
directory, waits until the node is idle, and stops exactly the daemons it started. Every
step that cannot work here raises :class:`SlurmUnavailable` with the reason, so tests skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = """\
ClusterName=faextract
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
ReturnToService=2
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


class SlurmUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """Context manager: ``with LocalSlurm(tmp) as slurm: slurm.run(["sbatch", ...])``."""

    def __init__(self, root: str | os.PathLike, cpus: int | None = None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.procs: list[subprocess.Popen] = []
        self.munged_pid: int | None = None
        self.env = dict(os.environ)

    def __enter__(self):
        for exe in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo"):
            if shutil.which(exe) is None:
                raise SlurmUnavailable(
                    f"{exe} not installed (apt-get install slurmctld slurmd slurm-client munge)"
                )
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting a local SLURM needs root")
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        (self.root / "spool").mkdir(parents=True, exist_ok=True)
        conf = self.root / "slurm.conf"
        conf.write_text(
            CONF.format(root=self.root, cpus=self.cpus, ctld_port=_free_port(), d_port=_free_port())
        )
        self.env["SLURM_CONF"] = str(conf)
        self._start_munge()
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=self.env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        self.procs.append(subprocess.Popen(["slurmd", "-D", "-N", "localhost", "-f", str(conf)], env=self.env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise SlurmUnavailable(f"{p.args[0]} exited: {self._log_tail()}")
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True
            )
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mix"):
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"the node did not become idle in 60 s: {self._log_tail()}")

    def _start_munge(self) -> None:
        run_dir = Path("/run/munge")
        sock = run_dir / "munge.socket.2"
        if sock.exists() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return  # a munged is already serving
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            raise SlurmUnavailable("no /etc/munge/munge.key (reinstall munge or run mungekey)")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        res = subprocess.run(
            ["runuser", "-u", "munge", "--", "munged", "--force"], capture_output=True, text=True
        )
        if res.returncode != 0:
            raise SlurmUnavailable(f"munged did not start: {res.stderr.strip()}")
        pid_file = run_dir / "munged.pid"
        for _ in range(50):
            if pid_file.exists():
                self.munged_pid = int(pid_file.read_text().strip())
                break
            time.sleep(0.1)

    def _log_tail(self) -> str:
        tails = []
        for name in ("slurmctld.log", "slurmd.log"):
            p = self.root / name
            if p.exists():
                tails.append(f"{name}: " + " | ".join(p.read_text().splitlines()[-3:]))
        return "; ".join(tails) or "no log"

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True, **kw
        )

    def sbatch_wait(
        self, script: str | os.PathLike, timeout: float = 600, cwd=None
    ) -> subprocess.CompletedProcess:
        """Submit with ``sbatch --wait`` and return its result (exit code = the job's)."""
        return self.run(["sbatch", "--wait", str(script)], timeout=timeout, cwd=cwd)

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.procs.clear()
        if self.munged_pid:
            try:
                os.kill(self.munged_pid, 15)
            except ProcessLookupError:
                pass
        return False
