"""A private one-node Ceph cluster for tests, with radosgw as its S3 gateway.

Debian's packages (`apt-get install ceph-mon ceph-osd radosgw`), started in
a directory of their own: one monitor, one OSD on memstore (its objects in
memory, so no disk to prepare), and radosgw's beast frontend on 127.0.0.1.
What it takes to come up: cephx on (radosgw does not connect without it),
pool size 1 (allowed explicitly), 8 placement groups a pool with the
autoscaler off, and CRUSH choosing among OSDs rather than hosts. The monitor
speaks only the v1 protocol, on a port of its own. A user with a known key
pair is made with `radosgw-admin`, and the test bucket through the S3 API
(boto3). Every wait is bounded; the daemons are stopped by their PIDs.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
BUCKET = "ingestd-test"
ACCESS_KEY = "ingestdtestkey"
SECRET_KEY = "ingestdtestsecret"
REGION = "us-east-1"


def find_ceph() -> bool:
    """Whether the monitor, OSD, gateway and tools are installed."""
    return all(
        shutil.which(tool)
        for tool in ("ceph-mon", "ceph-osd", "radosgw", "ceph", "ceph-authtool", "monmaptool")
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ceph:
    workdir: Path
    endpoint: str
    bucket: str = BUCKET
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def settings(self) -> dict[str, object]:
        """The keyword arguments of `ingestd.cas.s3store.s3_client`."""
        return {
            "bucket": self.bucket,
            "endpoint": self.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "allow_http": True,
        }

    def log_tail(self, name: str = "client.rgw.a", size: int = 3000) -> str:
        path = self.workdir / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else "<no log>"

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.processes):
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_ceph(workdir: Path) -> Ceph:
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "log", "mon.a", "osd.0", "rgw"):
        (workdir / sub).mkdir(exist_ok=True)
    mon_port, rgw_port = _free_port(), _free_port()
    fsid = str(uuid.uuid4())
    conf = workdir / "ceph.conf"
    keyring = workdir / "keyring"
    conf.write_text(
        f"""[global]
fsid = {fsid}
mon host = [v1:127.0.0.1:{mon_port}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr2 = false
mon data avail warn = 2
mon data avail crit = 1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {keyring}
run dir = {workdir}/run
admin socket = {workdir}/run/$name.asok
log file = {workdir}/log/$name.log
pid file = {workdir}/run/$name.pid
mon data = {workdir}/$name
osd data = {workdir}/$name
osd objectstore = memstore
memstore device bytes = 1073741824
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
osd max object name len = 460
osd max object namespace len = 64

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {workdir}/rgw
"""
    )
    authtool = ["ceph-authtool", str(keyring)]
    _run(["ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", "mon.",
          "--cap", "mon", "allow *"])  # fmt: skip
    for name, caps in [
        ("client.admin", {"mon": "allow *", "osd": "allow *", "mgr": "allow *", "mds": "allow *"}),
        ("osd.0", {"mon": "allow profile osd", "osd": "allow *", "mgr": "allow profile osd"}),
        ("client.rgw.a", {"mon": "allow rw", "osd": "allow rwx", "mgr": "allow rw"}),
    ]:
        cap_args = [arg for entity, cap in caps.items() for arg in ("--cap", entity, cap)]
        _run([*authtool, "--gen-key", "-n", name, *cap_args])
    monmap = workdir / "monmap"
    _run(["monmaptool", "--create", "--addv", "a", f"[v1:127.0.0.1:{mon_port}]", "--fsid", fsid,
          str(monmap)])  # fmt: skip
    base = ["-c", str(conf)]
    _run(
        ["ceph-mon", *base, "--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring", str(keyring)]
    )
    cluster = Ceph(workdir, f"http://127.0.0.1:{rgw_port}")
    try:
        cluster.processes.append(_daemon(["ceph-mon", *base, "-f", "-i", "a"], workdir, "mon"))
        osd_uuid = str(uuid.uuid4())
        _run(["ceph", *base, "osd", "new", osd_uuid], timeout=60)
        _run(["ceph-osd", *base, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid])
        cluster.processes.append(_daemon(["ceph-osd", *base, "-f", "-i", "0"], workdir, "osd"))
        cluster.processes.append(
            _daemon(["radosgw", *base, "-f", "-n", "client.rgw.a"], workdir, "rgw")
        )
        _wait_http(cluster, STARTUP_TIMEOUT)
        _run(
            ["radosgw-admin", *base, "user", "create", "--uid", "ingestd", "--display-name",
             "ingestd tests", "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY],
            timeout=60,
        )  # fmt: skip
        _create_bucket(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _run(argv: list[str], timeout: float = 30) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {done.stderr[-2000:]}")
    return done.stdout


def _daemon(argv: list[str], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    out = open(workdir / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_http(cluster: Ceph, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in cluster.processes:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}: {cluster.log_tail()}")
        try:
            httpx.get(cluster.endpoint, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"radosgw did not answer within {timeout}s: {cluster.log_tail()}")


def _create_bucket(cluster: Ceph) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=cluster.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            s3.create_bucket(Bucket=cluster.bucket)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # the gateway's pools may still be being created
