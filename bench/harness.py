"""Shared pieces of the end-to-end benchmarks (bench/suite.py, bench/e2e.py).

Tools and builds, free ports, the servers under test (nginx as upstream or proxy, a seks
broker over a prepared store), processes that are always stopped, and readings from /proc:
CPU time, resident memory, how busy the rest of the machine was. Not run directly.
"""
import http.client
import json
import os
import random
import resource
import shutil
import socket
import sqlite3
import string
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEKS = ROOT / "target" / "release" / "seks"
KEY = "sk-bench-" + "A1b2C3d4E5f6G7h8I9j0" * 2
TICK = os.sysconf("SC_CLK_TCK")
SERVER_CPU = "0"
CLIENT_CPU = "1"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
APT_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "curl": "curl", str(ECHO_MODULE): "libnginx-mod-http-echo"}


def ensure_tools(needed, oha=False):
    """Install what is missing of `needed` (commands or files in APT_PACKAGES), oha from
    crates.io if asked, and build seks in release mode (a no-op when it is up to date; a
    stale binary would measure old code)."""
    missing = [APT_PACKAGES[t] for t in needed if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)
    if oha and shutil.which("oha") is None:
        subprocess.run(["cargo", "install", "oha", "--locked"], check=True)
    subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port}")


def http_status(port, path, timeout=1.0):
    """Status of a bare GET, or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
        return int(head.split()[1])
    except (OSError, IndexError, ValueError):
        return None


def wait_ready(port, path, timeout=20):
    """Poll GET `path` every 2 ms until it answers 200; seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if http_status(port, path) == 200:
            return time.perf_counter() - started
        time.sleep(0.002)
    sys.exit(f"{path} on port {port} never answered 200")


def cpu_seconds(*pids):
    """utime + stime of these processes (all their threads, dead ones included)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_mib(*pids):
    """Resident memory of these processes, in MiB."""
    total = 0
    for pid in pids:
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmRSS:"))
        total += int(line.split()[1])
    return total / 1024


def load_average():
    return float(Path("/proc/loadavg").read_text().split()[0])


def machine_busy_seconds():
    """CPU seconds all processes on the machine have spent busy so far."""
    fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def children_cpu_seconds():
    """CPU of the children this process has waited for (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """How busy everything was over one measurement: the servers under test (their pids),
    the load generator (waited-for children), and every other process on the machine, in
    percent of one core; plus the load average at the start."""

    def __init__(self, server_pids):
        self.server_pids = server_pids

    def __enter__(self):
        self.load = load_average()
        self.start = (time.perf_counter(), machine_busy_seconds(), cpu_seconds(*self.server_pids), children_cpu_seconds())
        return self

    def __exit__(self, *exc):
        now = (time.perf_counter(), machine_busy_seconds(), cpu_seconds(*self.server_pids), children_cpu_seconds())
        wall, busy, servers, generator = (b - a for a, b in zip(self.start, now))
        self.server_cpu = servers
        self.reading = {
            "load_average": self.load,
            "server_cpu_pct": round(100 * servers / wall, 1),
            "generator_cpu_pct": round(100 * generator / wall, 1),
            "others_cpu_pct": round(max(0.0, 100 * (busy - servers - generator) / wall), 1),
        }


class Processes:
    """Servers started for a run; all stopped on exit, whatever happened."""

    def __init__(self):
        self.procs = []

    def __enter__(self):
        return self

    def start(self, cmd, cpu=SERVER_CPU, **kwargs):
        proc = subprocess.Popen(["taskset", "-c", cpu, *map(str, cmd)], **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc):
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.procs.remove(proc)

    def __exit__(self, *exc):
        for proc in list(self.procs):
            self.stop(proc)


def start_nginx(procs, work, http_body, modules=()):
    """One nginx (one worker, no access log) on the server CPU; returns (master, worker pid)."""
    conf = work / f"nginx-{random.randrange(1 << 30)}.conf"
    loads = "".join(f"load_module {m};\n" for m in modules)
    conf.write_text(
        f"{loads}worker_processes 1; worker_rlimit_nofile 16384; daemon off; pid {conf}.pid; error_log stderr error;\n"
        f"events {{ worker_connections 8192; }}\n"
        f"http {{ access_log off; {http_body} }}\n"
    )
    master = procs.start(["nginx", "-c", conf, "-e", "stderr"])
    for _ in range(100):
        children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()
        if children:
            return master, int(children[0])
        time.sleep(0.05)
    sys.exit("nginx worker not found")


def nginx_proxy_conf(port, upstream_port, streaming_locations=()):
    """nginx as a fair reverse proxy: injects the key, keeps upstream connections alive,
    doesn't buffer the given (SSE) locations."""
    proxy = (
        f'proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
        f' proxy_set_header Authorization "Bearer {KEY}";'
    )
    streams = "".join(f"location = {loc} {{ {proxy} proxy_buffering off; }}\n" for loc in streaming_locations)
    return (
        f"upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 256; keepalive_requests 10000000; }}\n"
        f"server {{ listen 127.0.0.1:{port} backlog=4096; keepalive_requests 10000000;\n"
        f"location / {{ {proxy} }}\n{streams}}}"
    )


def seks_env(data):
    """Environment for seks commands over the store in `data`."""
    env = dict(os.environ, SEKS_DATA_DIR=str(data), SEKS_CONFIG=str(data / "seks.toml"), SEKS_LOG="warn")
    env.pop("SEKS_MASTER_KEY", None)
    return env


def seks_cli(env, *args, stdin=None):
    """Run a seks command; its stdout, stripped."""
    out = subprocess.run([SEKS, *args], input=stdin, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def seks_store(data, upstream_port, secrets=1, extra_config="", store_url=None):
    """A fresh data dir with `secrets` openai secrets pointing at the upstream, one of them
    ('main') holding KEY, in the store at `store_url` (default: SQLite in the data dir);
    returns the env for seks commands."""
    data.mkdir()
    (data / "seks.toml").write_text(f'[providers.openai]\nbase_url = "http://127.0.0.1:{upstream_port}"\n{extra_config}')
    env = seks_env(data)
    if store_url:
        env["SEKS_STORE_URL"] = store_url
    seks_cli(env, "secret", "add", "main", "--provider", "openai", stdin=KEY)
    add_fillers(env, secrets - 1)
    return env


def add_fillers(env, count):
    """Store `count` random openai secrets through the admin API of a broker started for
    the purpose (a CLI call per secret takes ~0.2 s, a POST ~5 ms)."""
    if count <= 0:
        return
    admin = seks_cli(env, "admin", "token", "create")
    admin_port = free_port()
    with Processes() as procs:
        start_seks(procs, env, f"127.0.0.1:{admin_port}")
        conn = http.client.HTTPConnection("127.0.0.1", admin_port)
        for i in range(count):
            value = "sk-filler-" + "".join(random.choices(string.ascii_letters + string.digits, k=40))
            body = json.dumps({"name": f"filler{i}", "provider": "openai", "value": value})
            conn.request("POST", "/admin/v1/secrets", body, {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
            answer = conn.getresponse()
            if answer.status != 201:
                sys.exit(f"storing a filler secret: {answer.status} {answer.read()[:200]!r}")
            answer.read()
    seks_cli(env, "admin", "token", "revoke")


def bulk_tokens(data, count):
    """Add `count` tokens straight into the store, spread over its secrets, copying every
    column of an existing token but its id, agent, secret and hash (a random one: these
    tokens are never presented, only looked past). The broker must not be running."""
    db = sqlite3.connect(data / "seks.db")
    with db:
        cursor = db.execute("SELECT * FROM tokens LIMIT 1")
        columns = [d[0] for d in cursor.description]
        model = dict(zip(columns, cursor.fetchone()))
        secret_ids = [row[0] for row in db.execute("SELECT id FROM secrets")]
        rows = (
            {**model, "id": f"tok_bulk{i:010d}", "agent": f"agent-{i % 500}", "secret_id": secret_ids[i % len(secret_ids)], "token_hash": os.urandom(32)}
            for i in range(count)
        )
        marks = ", ".join(f":{c}" for c in columns)
        db.executemany(f"INSERT INTO tokens ({', '.join(columns)}) VALUES ({marks})", rows)
    db.close()


def start_postgres(procs, work):
    """A throwaway PostgreSQL cluster in `work` (as the `postgres` user when run as root:
    initdb refuses root) on the load generator's CPU, as a database on another machine
    wouldn't take the broker's; returns (its server process, its URL)."""
    bindir = Path(subprocess.run(["pg_config", "--bindir"], check=True, capture_output=True, text=True).stdout.strip())
    data = work / "pg"
    data.mkdir()
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        # setpriv execs (runuser forks), so stopping the process stops PostgreSQL.
        as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    subprocess.run([*as_user, bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust"], check=True, capture_output=True)
    port = free_port()
    server = procs.start(
        [*as_user, bindir / "postgres", "-D", data, "-p", port, "-k", data, "-c", "listen_addresses=127.0.0.1"],
        cpu=CLIENT_CPU, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while subprocess.run([bindir / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode != 0:
        if time.time() > deadline:
            sys.exit("PostgreSQL did not start")
        time.sleep(0.1)
    return server, f"postgres://postgres@127.0.0.1:{port}/postgres"


def start_seks(procs, env, admin="off"):
    """`seks serve` on the server CPU over `env`'s store (admin API on `admin`); returns
    (proc, port, seconds from exec to the first 200 on /readyz)."""
    port = free_port()
    proc = procs.start([SEKS, "serve", "--listen", f"127.0.0.1:{port}", "--admin-listen", admin], env=env)
    return proc, port, wait_ready(port, "/readyz")
