#!/usr/bin/env python3
"""Issue 7, "as fast as nginx": seks against nginx and the bare upstream, in one run.

Starts, on this machine:
  - an upstream: nginx (with its echo module) answering POST /v1/chat/completions with a
    small OpenAI-shaped JSON, GET /v1/stream?hold=S with an SSE stream (first event at
    once, the rest S seconds later) and GET /v1/files/big with 100 MiB;
  - nginx as a reverse proxy injecting `Authorization: Bearer <key>`, with upstream
    keep-alive (and an unbuffered SSE location);
  - `seks serve` over a store holding the key as a secret and a token for it.
Servers run on CPU 0, load generators on CPU 1. For each target (direct = the upstream
itself, nginx, seks), back to back, in --rounds rounds (medians reported):
  - max throughput (oha, closed loop) with 32 and 256 keep-alive connections, and the
    proxy's peak RSS meanwhile;
  - latency p50/p90/p99/p99.9 at constant 500, 2,000 and 5,000 req/s (oha -q with
    --latency-correction: time counts from when a request was due, so queueing shows),
    and the server's CPU per request (utime+stime from /proc, µs);
  - SSE time to first byte: connected first, timed from sending the request to the first
    `data:` byte;
  - 100 MiB download rate and the proxy's CPU per 100 MiB;
  - RSS idle (after a warm-up) and with 1,000 SSE streams open at once; seks's start-up
    time (exec to the first 200 on /readyz).
Each load run records the load average and the CPU used by the servers, the load
generator and everything else (in % of a core): repeat a run where others were busy.
--big-store adds a broker over 1,000 secrets and 100,000 tokens: its start-up, idle RSS and
p50/p99 at 2,000 req/s against the small store's, alternating. --postgres does the same for
a broker whose store is PostgreSQL (a throwaway cluster on the load generator's CPU, as a
database on another machine wouldn't share the broker's). --soak SECONDS runs seks at
80% of its 32-connection max and samples its RSS every second. --floor adds, as a fourth
target measured like the others, the least proxy seks's stack can be (examples/hyper_floor.rs:
tokio's one-thread runtime, hyper's server and pooled client, a fixed key injected, nothing
else), so that the gap to nginx splits into the stack's part and seks's own work.
Prints one table (each figure per target, seks/nginx, overhead over direct, the issue's
targets met or missed, the conditions) and writes it as JSON and as Markdown.

--pgo measures seks (and the floor) built with profile-guided optimisation (bench/pgo.py
builds them first).

Usage: bench/suite.py [--seconds 10] [--rounds 1] [--big-store] [--postgres] [--floor] [--pgo]
                      [--soak 600] [--out bench/out/suite.json]
(as root: installs nginx, its echo module and curl from Debian if missing, oha from
crates.io, and builds seks in release mode if it isn't built)
"""
import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness
from harness import (
    CLIENT_CPU, ECHO_MODULE, KEY, ROOT, Meter, Processes, bulk_tokens, cpu_seconds,
    ensure_tools, free_port, load_average, nginx_proxy_conf, rss_mib, seks_cli, seks_store,
    start_nginx, start_postgres, start_seks, wait_port,
)

REQUEST = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]})
ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1800000000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}, separators=(",", ":"))
CHUNK = 'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"%s"}}]}\\n\\n'
RATES = (500, 2000, 5000)
CONNECTIONS = (32, 256)
RATE_CONNECTIONS = 32
OPEN_STREAMS = 1000
TTFB_SAMPLES = 200
DOWNLOADS = 3
BIG_SECRETS, BIG_TOKENS = 1000, 100_000
BIG_STORE, POSTGRES = "seks big store", "seks on PostgreSQL"
FLOOR = "hyper floor"
FLOOR_BINARY = ROOT / "target" / "release" / "examples" / "hyper_floor"


@dataclass
class Target:
    """One thing under load: where its API lives and which processes are it."""
    name: str
    port: int
    prefix: str
    auth: str
    cpu_pids: list
    rss_pids: list = field(default_factory=list)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{self.prefix}{path}"


def upstream_conf(port, files):
    """The upstream: small JSON, SSE that holds for ?hold= seconds, static big file."""
    sse = (
        "default_type text/event-stream; "
        + f"echo -n '{CHUNK % 'Hello'}'; echo_flush; echo_sleep $arg_hold; "
        + "".join(f"echo -n '{CHUNK % word}'; " for word in ("! How", " can", " I", " help?"))
        + "echo -n 'data: [DONE]\\n\\n';"
    )
    return (
        f"server {{ listen 127.0.0.1:{port} backlog=4096; keepalive_requests 10000000;\n"
        f"location = /v1/chat/completions {{ default_type application/json; return 200 '{ANSWER}'; }}\n"
        f"location = /v1/stream {{ {sse} }}\n"
        f"location /v1/files/ {{ root {files}; }} }}"
    )


def oha(target, seconds, connections, rate=None):
    """One oha run of POST /v1/chat/completions: its JSON, plus what it counted as errors."""
    cmd = [
        "taskset", "-c", CLIENT_CPU, "oha", "--no-tui", "--output-format", "json",
        "--wait-ongoing-requests-after-deadline", "-z", f"{seconds}s", "-c", str(connections),
        "-m", "POST", "-d", REQUEST, "-H", "Content-Type: application/json",
        "-H", f"Authorization: Bearer {target.auth}", target.url("/v1/chat/completions"),
    ]
    if rate:
        cmd[4:4] = ["-q", str(rate), "--latency-correction"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    codes = out.get("statusCodeDistribution", {})
    out["ok"] = codes.get("200", 0)
    out["errors"] = sum(n for code, n in codes.items() if code != "200") + sum(out.get("errorDistribution", {}).values())
    return out


class RssPeak:
    """The highest RSS of some processes, sampled every 50 ms while in the block."""

    def __init__(self, pids):
        self.pids, self.peak, self.done = pids, 0.0, threading.Event()

    def sample(self):
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss_mib(*self.pids))

    def __enter__(self):
        self.thread = threading.Thread(target=self.sample, daemon=True) if self.pids else None
        if self.thread:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        if self.thread:
            self.thread.join()


class Run:
    """Samples of every figure, per target, over the rounds; and what the machine was doing."""

    def __init__(self, servers):
        self.servers = servers
        self.samples = {}
        self.conditions = {}

    def add(self, figure, target, value):
        self.samples.setdefault(figure, {}).setdefault(target, []).append(value)

    def medians(self):
        return {f: {t: statistics.median(v) for t, v in per.items()} for f, per in self.samples.items()}

    def load(self, target, seconds, connections, rate=None, label=None):
        """One oha run against `target`, recorded under `label`'s figures."""
        with Meter(self.servers) as meter, RssPeak(target.rss_pids) as peak:
            cpu_before = cpu_seconds(*target.cpu_pids)
            out = oha(target, seconds, connections, rate)
            cpu = cpu_seconds(*target.cpu_pids) - cpu_before
        self.conditions.setdefault(label, {}).setdefault(target.name, []).append(meter.reading)
        self.add(f"errors {label}", target.name, out["errors"])
        if rate is None:
            self.add(f"max req/s, {connections} conns", target.name, out["ok"] / out["summary"]["total"])
            if target.rss_pids:
                self.add(f"RSS MiB, peak at {connections} conns", target.name, peak.peak)
            return out
        for p in ("p50", "p90", "p99", "p99.9"):
            self.add(f"{p} µs @{rate:,}/s", target.name, 1e6 * out["latencyPercentiles"][p])
        self.add(f"CPU µs/req @{rate:,}/s", target.name, 1e6 * cpu / max(1, out["ok"]))
        return out


def ttfb_samples(target, samples, hold="0.002"):
    """Time from sending GET /v1/stream to its first `data:` byte, in µs, per sample."""
    request = (
        f"GET {target.prefix}/v1/stream?hold={hold} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {target.auth}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    ).encode()
    times = []
    for _ in range(samples):
        with socket.create_connection(("127.0.0.1", target.port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.perf_counter()
            s.sendall(request)
            seen = b""
            while b"data:" not in seen:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError(f"{target.name}: stream ended before its first event: {seen[:200]!r}")
                seen += chunk
            times.append(1e6 * (time.perf_counter() - started))
            while s.recv(65536):
                pass
    return times


async def open_streams(target, count, hold=30):
    """Open `count` SSE streams (64 connecting at a time) and keep them all open; once each
    has had its first event, read the RSS. Returns (streams open, RSS MiB, seconds)."""
    request = (
        f"GET {target.prefix}/v1/stream?hold={hold} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {target.auth}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    gate = asyncio.Semaphore(64)

    async def one():
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
            writer.write(request)
            seen = b""
            while b"data:" not in seen:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    writer.close()
                    raise ConnectionError(seen[:200])
                seen += chunk
            return writer

    started = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    elapsed = time.perf_counter() - started
    writers = [r for r in results if isinstance(r, asyncio.StreamWriter)]
    rss = rss_mib(*target.rss_pids)
    for w in writers:
        w.close()
    return len(writers), rss, elapsed


def download(run, target, runs):
    """GET the 100 MiB file `runs` times with curl: MiB/s (median) and CPU ms per 100 MiB."""
    cmd = [
        "taskset", "-c", CLIENT_CPU, "curl", "-sf", "-o", "/dev/null", "-w", "%{time_total}",
        "-H", f"Authorization: Bearer {target.auth}", target.url("/v1/files/big"),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    before = cpu_seconds(*target.cpu_pids)
    times = [float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout) for _ in range(runs)]
    run.add("100 MiB download MiB/s", target.name, 100 / statistics.median(times))
    run.add("CPU ms per 100 MiB", target.name, 1000 * (cpu_seconds(*target.cpu_pids) - before) / runs)


def warm_up(run, target):
    """A second of load; then, once the target has been left alone for a second, its RSS."""
    oha(target, 1, RATE_CONNECTIONS)
    if target.rss_pids:
        time.sleep(1)
        run.add("RSS MiB, idle", target.name, rss_mib(*target.rss_pids))


def measure(run, targets, args, rounds):
    """Every per-target figure, the targets taken in a rotating order each round."""
    for r in range(rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for connections in CONNECTIONS:
            for t in order:
                run.load(t, args.seconds, connections, label=f"(max, {connections} conns)")
        for rate in RATES:
            for t in order:
                run.load(t, args.seconds, RATE_CONNECTIONS, rate, label=f"@{rate:,}/s")
        for t in order:
            times = ttfb_samples(t, TTFB_SAMPLES)
            run.add("SSE TTFB p50 µs", t.name, statistics.median(times))
            run.add("SSE TTFB p99 µs", t.name, statistics.quantiles(times, n=100)[98])
        for t in order:
            download(run, t, DOWNLOADS)


def many_streams(run, targets):
    """RSS of each proxy with OPEN_STREAMS SSE streams open through it at once."""
    for t in targets:
        if t.rss_pids:
            opened, rss, seconds = asyncio.run(open_streams(t, OPEN_STREAMS))
            run.add(f"RSS MiB, {OPEN_STREAMS:,} open SSE streams", t.name, rss)
            run.add(f"SSE streams opened (of {OPEN_STREAMS:,})", t.name, opened)
            run.add(f"seconds to open {OPEN_STREAMS:,} streams", t.name, seconds)


def big_store(run, procs, work, upstream_port, small, args):
    """A broker over 1,000 secrets and 100,000 tokens, against the small store's broker."""
    data = work / "seks-big"
    started = time.perf_counter()
    env = seks_store(data, upstream_port, BIG_SECRETS)
    token = seks_cli(env, "token", "create", "--secret", "main")
    bulk_tokens(data, BIG_TOKENS - 1)
    filled = time.perf_counter() - started
    proc, port, startup = start_seks(procs, env)
    big = Target(BIG_STORE, port, "/api/openai", token, [proc.pid], [proc.pid])
    run.add("start-up ms", big.name, 1000 * startup)
    warm_up(run, big)
    alternate(run, small, big, [proc.pid], args, "small vs big store")
    procs.stop(proc)
    return {"secrets": BIG_SECRETS, "tokens": BIG_TOKENS, "fill_seconds": round(filled, 1)}


def postgres_store(run, procs, work, upstream_port, small, args):
    """A broker over a PostgreSQL store with the same secret and token, against SQLite's."""
    server, url = start_postgres(procs, work)
    env = seks_store(work / "seks-pg", upstream_port, store_url=url)
    token = seks_cli(env, "token", "create", "--secret", "main")
    proc, port, startup = start_seks(procs, env)
    pg = Target(POSTGRES, port, "/api/openai", token, [proc.pid], [proc.pid])
    run.add("start-up ms", pg.name, 1000 * startup)
    warm_up(run, pg)
    alternate(run, small, pg, [proc.pid, server.pid], args, "SQLite vs PostgreSQL store")
    procs.stop(proc)
    procs.stop(server)
    return {"server": subprocess.run(["pg_config", "--version"], capture_output=True, text=True).stdout.strip()}


def alternate(run, small, other, pids, args, label):
    """p50/p99 and CPU per request at 2,000 req/s of `small` and `other` (whose processes
    are `pids`), taken in turns, at least twice each."""
    for r in range(max(2, args.rounds)):
        for t in (small, other) if r % 2 == 0 else (other, small):
            with Meter(run.servers + pids) as meter:
                cpu_before = cpu_seconds(*t.cpu_pids)
                out = oha(t, args.seconds, RATE_CONNECTIONS, 2000)
                cpu = cpu_seconds(*t.cpu_pids) - cpu_before
            run.conditions.setdefault(label, {}).setdefault(t.name, []).append(meter.reading)
            for p in ("p50", "p99"):
                run.add(f"{p} µs @2,000/s, {label}", t.name, 1e6 * out["latencyPercentiles"][p])
            run.add(f"CPU µs/req @2,000/s, {label}", t.name, 1e6 * cpu / max(1, out["ok"]))
            run.add(f"errors, {label}", t.name, out["errors"])


def soak(target, servers, rate, seconds):
    """oha at `rate` for `seconds` while sampling RSS each second; flatness against the
    median of the first tenth of the run."""
    samples = []
    done = threading.Event()

    def sample():
        while not done.wait(1):
            samples.append(rss_mib(*target.rss_pids))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with Meter(servers) as meter:
        out = oha(target, seconds, RATE_CONNECTIONS, rate)
    done.set()
    sampler.join()
    baseline = statistics.median(samples[: max(1, len(samples) // 10)])
    return {
        "rate": rate, "seconds": seconds, "rss_mib": [round(s, 1) for s in samples],
        "rss_baseline_mib": baseline, "rss_max_deviation_pct": 100 * max(abs(s / baseline - 1) for s in samples),
        "p50_us": 1e6 * out["latencyPercentiles"]["p50"], "p99_us": 1e6 * out["latencyPercentiles"]["p99"],
        "errors": out["errors"], "achieved_rps": out["ok"] / out["summary"]["total"], "conditions": meter.reading,
    }


def check(results):
    """The issue's targets against this run's medians: (what, value, limit, met) each."""
    f, checks = results["figures"], []

    def add(what, value, limit, met):
        checks.append({"target": what, "value": None if value is None else round(value, 3), "limit": limit, "met": met})

    for c in CONNECTIONS:
        v = f[f"max req/s, {c} conns"]
        add(f"max req/s at {c} conns, seks/nginx", v["seks"] / v["nginx"], "≥ 0.9", v["seks"] / v["nginx"] >= 0.9)
    for p, limit in (("p50", 1.25), ("p99", 1.5)):
        v = f[f"{p} µs @2,000/s"]
        if v["nginx"] > v["direct"]:
            added = (v["seks"] - v["direct"]) / (v["nginx"] - v["direct"])
            add(f"{p} added over direct @2,000/s, seks/nginx", added, f"≤ {limit}", added <= limit)
        else:  # nginx faster than direct: a disturbed measurement, nothing to compare
            add(f"{p} added over direct @2,000/s, seks/nginx", None, f"≤ {limit}", None)
    errors = f["errors @2,000/s"]["seks"]
    add("errors @2,000/s, seks", errors, "0", errors == 0)
    ttfb = f["SSE TTFB p50 µs"]
    add("SSE TTFB p50, seks − direct (µs)", ttfb["seks"] - ttfb["direct"], "≤ 1000", ttfb["seks"] - ttfb["direct"] <= 1000)
    add("RSS idle MiB, seks", f["RSS MiB, idle"]["seks"], "≤ 32", f["RSS MiB, idle"]["seks"] <= 32)
    streams = f[f"RSS MiB, {OPEN_STREAMS:,} open SSE streams"]["seks"]
    add(f"RSS MiB with {OPEN_STREAMS:,} open streams, seks", streams, "≤ 256", streams <= 256)
    if "soak" in results:
        dev = results["soak"]["rss_max_deviation_pct"]
        add(f"RSS over a {results['soak']['seconds']} s soak, max deviation %", dev, "≤ 10", dev <= 10)
    if "big_store" in results:
        for p in ("p50", "p99"):
            v = f[f"{p} µs @2,000/s, small vs big store"]
            ratio = v[BIG_STORE] / v["seks"]
            add(f"{p} @2,000/s, big store / small store", ratio, "≤ 1.1", ratio <= 1.1)
        startup = f["start-up ms"][BIG_STORE]
        add("start-up to ready with the big store, ms", startup, "≤ 200", startup <= 200)
    if "postgres" in results:
        for p in ("p50", "p99"):
            v = f[f"{p} µs @2,000/s, SQLite vs PostgreSQL store"]
            ratio = v[POSTGRES] / v["seks"]
            add(f"{p} @2,000/s, PostgreSQL / SQLite store (issue 8)", ratio, "≤ 1.1", ratio <= 1.1)
    return checks


def versions():
    def first_line(cmd):
        out = subprocess.run(cmd, capture_output=True, text=True)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    return {
        "seks_commit": first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "nginx": first_line(["nginx", "-v"]),
        "oha": first_line(["oha", "--version"]),
    }


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(mem, 1), "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": load_average(), **versions(),
    }


def fmt(value):
    if value is None:
        return "–"
    if value == int(value) and abs(value) < 100:
        return f"{value:.0f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"


def vs_direct(figure, values, name):
    """A target's overhead over direct: % for rates, added µs for times, none otherwise."""
    direct, value = values.get("direct"), values.get(name)
    if direct is None or value is None or direct == 0:
        return ""
    if figure.startswith(("max req/s", "100 MiB download")):
        return f"{100 * (value / direct - 1):+.0f}%"
    if "µs" in figure and "CPU" not in figure:
        return f"{value - direct:+,.0f}"
    return ""


def table(results):
    """Header and rows: each figure per target, seks/nginx, overheads over direct."""
    floor = [FLOOR] * results["settings"]["floor"]
    names = ["direct", "nginx", *floor, "seks"] + [BIG_STORE] * ("big_store" in results) + [POSTGRES] * ("postgres" in results)
    header = ["figure", *names, "seks/nginx", *(["floor/nginx"] * len(floor)), "nginx−direct", "seks−direct"]
    rows = []

    def ratio(values, name):
        return fmt(values[name] / values["nginx"]) if values.get("nginx") and name in values else ""

    for figure, values in results["figures"].items():
        rows.append([
            figure, *(fmt(values.get(n)) for n in names), ratio(values, "seks"),
            *(ratio(values, n) for n in floor), vs_direct(figure, values, "nginx"), vs_direct(figure, values, "seks"),
        ])
    return header, rows


def notes(results):
    """Lines under the table: what the columns mean, targets met, conditions, the machine."""
    lines = [
        "CPU µs/req: the upstream's for direct; the proxy's own (upstream not counted) for nginx and seks.",
        "RSS: master + worker for nginx. nginx−direct, seks−direct: added µs for latencies, % for rates.",
    ]
    if results["settings"]["pgo"]:
        lines.append("seks and the hyper floor: built with profile-guided optimisation (bench/pgo.py); nginx: Debian's.")
    if results["settings"]["floor"]:
        lines.append(f"{FLOOR}: examples/hyper_floor.rs, seks's stack (tokio, hyper) forwarding with a fixed key and nothing else.")
    lines.append("Targets:")
    for c in results["targets"]:
        verdict = {True: "ok", False: "MISS", None: "n/a"}[c["met"]]
        lines.append(f"  {verdict:4} {c['target']}: {fmt(c['value'])} (target {c['limit']})")
    lines.append("Conditions, worst over rounds (load average / others' CPU / load generator's CPU, % of a core):")
    for label, per in results["conditions"].items():
        readings = ", ".join(
            f"{t} {max(x['load_average'] for x in r):.1f}/{max(x['others_cpu_pct'] for x in r):.0f}"
            f"/{max(x['generator_cpu_pct'] for x in r):.0f}"
            for t, r in per.items()
        )
        lines.append(f"  {label}: {readings}")
    if "soak" in results:
        s = results["soak"]
        lines.append(
            f"Soak: {s['seconds']} s at {s['rate']:,} req/s (achieved {s['achieved_rps']:,.0f}): RSS {min(s['rss_mib'])}–"
            f"{max(s['rss_mib'])} MiB, p50 {s['p50_us']:,.0f} µs, p99 {s['p99_us']:,.0f} µs, errors {s['errors']}, "
            f"others' CPU {s['conditions']['others_cpu_pct']}% of a core"
        )
    m = results["machine"]
    lines.append(
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}, {m['date']}; seks {m['seks_commit']}, "
        f"{m['nginx']}, {m['oha']}; {results['settings']['seconds']} s per load run, {results['settings']['rounds']} round(s); "
        f"load average {m['load_before']} before, {m['load_after']} after; "
        f"others' CPU during load runs up to {results['others_cpu_max_pct']}% of a core"
    )
    return lines


def as_text(results):
    header, rows = table(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "-" * len(line(header)), *map(line, rows), "", *notes(results)])


def as_markdown(results):
    header, rows = table(results)
    md = [f"| {' | '.join(header)} |", "|---" + "|---:" * (len(header) - 1) + "|"]
    md += [f"| {' | '.join(r)} |" for r in rows]
    md += [f"- {l.strip()}" if l.startswith("  ") else f"\n{l}" for l in notes(results)]
    return "\n".join(md) + "\n"


def main():
    global FLOOR_BINARY  # --pgo measures the floor's PGO build
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each load run")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every measurement; medians reported")
    parser.add_argument("--big-store", action="store_true", help=f"also {BIG_SECRETS:,} secrets and {BIG_TOKENS:,} tokens")
    parser.add_argument("--postgres", action="store_true", help="also a broker on a PostgreSQL store")
    parser.add_argument("--floor", action="store_true", help="also a bare hyper proxy, the stack's floor")
    parser.add_argument("--pgo", action="store_true", help="measure seks and the floor built with profile-guided optimisation (bench/pgo.py)")
    parser.add_argument("--soak", type=int, metavar="SECONDS", help="RSS over a run this long at 80%% of seks's max")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "suite.json"))
    args = parser.parse_args()
    ensure_tools(["nginx", "curl", str(ECHO_MODULE)], oha=True)
    if args.pgo:
        import pgo  # it imports this module
        built = pgo.build_pgo(floor=args.floor)
        harness.SEKS, FLOOR_BINARY = built[0], built[-1] if args.floor else FLOOR_BINARY
    if args.floor:
        subprocess.run(["cargo", "build", "--release", "--locked", "--example", "hyper_floor"], cwd=ROOT, check=True)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    work = Path(tempfile.mkdtemp(prefix="seks-suite-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    try:
        with Processes() as procs:
            results = run_suite(args, work, procs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(as_text(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    out.with_suffix(".md").write_text(as_markdown(results))
    print(f"written to {out} and, as Markdown for bench/RESULTS.md, {out.with_suffix('.md')}")


def run_suite(args, work, procs):
    """Start the targets, measure everything, return the results."""
    results = {"machine": machine(), "settings": vars(args)}
    files = work / "files"
    (files / "v1" / "files").mkdir(parents=True)
    block = b'{"delta":{"content":"The quick brown fox jumps over the lazy dog\\n"}}\n' * 1024
    with open(files / "v1" / "files" / "big", "wb") as f:
        f.write((block * (100 * 1024 * 1024 // len(block) + 1))[: 100 * 1024 * 1024])
    upstream_port, proxy_port = free_port(), free_port()
    up_master, up_worker = start_nginx(procs, work, upstream_conf(upstream_port, files), [ECHO_MODULE])
    ng_master, ng_worker = start_nginx(procs, work, nginx_proxy_conf(proxy_port, upstream_port, ["/v1/stream"]))
    wait_port(upstream_port)
    wait_port(proxy_port)
    env = seks_store(work / "seks", upstream_port)
    token = seks_cli(env, "token", "create", "--secret", "main")
    seks_proc, seks_port, startup = start_seks(procs, env)
    targets = [
        Target("direct", upstream_port, "", KEY, [up_worker]),
        Target("nginx", proxy_port, "", token, [ng_worker], [ng_master.pid, ng_worker]),
        Target("seks", seks_port, "/api/openai", token, [seks_proc.pid], [seks_proc.pid]),
    ]
    if args.floor:
        floor_port = free_port()
        floor_proc = procs.start([FLOOR_BINARY, floor_port, upstream_port])
        wait_port(floor_port)
        targets.insert(2, Target(FLOOR, floor_port, "/api/openai", token, [floor_proc.pid], [floor_proc.pid]))
    run = Run([t.cpu_pids[0] for t in targets])
    run.add("start-up ms", "seks", 1000 * startup)
    for t in targets:
        warm_up(run, t)
    measure(run, targets, args, args.rounds)
    if args.big_store:
        results["big_store"] = big_store(run, procs, work, upstream_port, targets[-1], args)
    if args.postgres:
        results["postgres"] = postgres_store(run, procs, work, upstream_port, targets[-1], args)
    if args.soak:
        rate = int(0.8 * statistics.median(run.samples["max req/s, 32 conns"]["seks"]))
        results["soak"] = soak(targets[-1], run.servers, rate, args.soak)
    many_streams(run, targets)  # last: the upstream holds the streams for 30 s more
    results["figures"] = run.medians()
    results["samples"] = run.samples
    results["conditions"] = run.conditions
    results["others_cpu_max_pct"] = max(r["others_cpu_pct"] for per in run.conditions.values() for rs in per.values() for r in rs)
    results["machine"]["load_after"] = load_average()
    results["targets"] = check(results)
    return results


if __name__ == "__main__":
    main()
