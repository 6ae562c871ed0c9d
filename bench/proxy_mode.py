#!/usr/bin/env python3
"""What proxy mode (HTTPS_PROXY) costs next to base-URL mode, in one run (issue 10).

Both modes reach the same HTTPS upstream — nginx with TLS as the `openai` provider at
https://localhost (`[resolve]` sends it to nginx's port; localhost because oha resolves the
target itself, proxy or not), verified by the broker against a bench CA — with the same
token, so they
differ only on the agent's side: plain HTTP to /api/openai in base-URL mode; in proxy mode
a CONNECT tunnel, TLS with a leaf from the broker's CA, and the token found as a placeholder
among the request's headers. Measured as the broker's CPU time per request (utime+stime
from /proc), the steadiest figure on a shared machine:
  1. keep-alive: N requests on C reused connections (oha), base-URL against proxy mode,
     alternating, R rounds, medians; the issue's target is proxy <= 1.5 x base-URL;
  2. the tunnel's set-up, reported apart: proxy mode with a new connection per request
     (CONNECT, TLS handshake, leaf from the cache), less the keep-alive cost per request.
Broker and nginx run on CPU 0, oha on CPU 1. Prints a table and writes JSON.

Usage: bench/proxy_mode.py [--requests 20000] [--connections 8] [--rounds 3]
                           [--out bench/out/proxy_mode.json]
(needs nginx, openssl and oha; a release build of seks is made if missing)
"""
import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import (
    CLIENT_CPU, KEY, ROOT, Meter, Processes, cpu_seconds, ensure_tools, free_port, load_average, seks_cli,
    seks_env, start_nginx, start_seks, wait_port,
)

HOST = "localhost"
ANSWER = '{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"}]}'


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def bench_ca(work):
    """A CA and a certificate for HOST signed by it (ECDSA P-256), as PEM files in `work`."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=seks bench CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=work)
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={HOST}", cwd=work)
    (work / "leaf.ext").write_text(f"subjectAltName=DNS:{HOST}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext", cwd=work)


def oha(args, requests, connections, extra=()):
    """Run oha on the client CPU; its JSON summary. Every answer must be a 200."""
    cmd = ["taskset", "-c", CLIENT_CPU, "oha", "--no-tui", "--output-format", "json",
           "-n", str(requests), "-c", str(connections), *extra, *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"oha failed: {done.stderr or done.stdout}")
    summary = json.loads(done.stdout)
    codes = summary.get("statusCodeDistribution", {})
    if set(codes) != {"200"} or summary.get("errorDistribution"):
        sys.exit(f"oha saw failures: {codes} {summary.get('errorDistribution')}")
    return summary


def cpu_per_request(pid, args, requests, connections, extra=()):
    """Broker CPU microseconds per request over one oha run, with the run's readings."""
    with Meter([pid]) as meter:
        summary = oha(args, requests, connections, extra)
    return {
        "cpu_us_per_request": 1e6 * meter.server_cpu / requests,
        "rps": summary["summary"]["requestsPerSec"],
        "p50_ms": 1000 * summary["latencyPercentiles"]["p50"],
        **meter.reading,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000, help="requests per keep-alive run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--handshakes", type=int, default=2000, help="requests (tunnels) per new-connection run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "proxy_mode.json"))
    args = parser.parse_args()
    ensure_tools(["nginx", "openssl"], oha=True)
    work = Path(tempfile.mkdtemp(prefix="seks-bench-proxy-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    try:
        with Processes() as procs:
            run(args, work, procs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work, procs):
    bench_ca(work)
    for name in ("leaf.pem", "leaf.key"):
        (work / name).chmod(0o644)
    upstream = free_port()
    start_nginx(procs, work, (
        f"server {{ listen 127.0.0.1:{upstream} ssl; ssl_certificate {work / 'leaf.pem'};"
        f" ssl_certificate_key {work / 'leaf.key'}; keepalive_requests 10000000;"
        f" location / {{ default_type application/json; return 200 '{ANSWER}'; }} }}"
    ))
    wait_port(upstream)
    proxy_port = free_port()
    data = work / "seks"
    data.mkdir()
    (data / "seks.toml").write_text(
        f'[upstream]\nextra_ca_file = "{work / "ca.pem"}"\n'
        f'[providers.openai]\nbase_url = "https://{HOST}"\n'
        f'[forward]\nlisten = "127.0.0.1:{proxy_port}"\nallow_addresses = ["127.0.0.1"]\n'
        f'[resolve]\n"{HOST}" = "127.0.0.1:{upstream}"\n'
    )
    env = seks_env(data)
    seks_cli(env, "secret", "add", "main", "--provider", "openai", stdin=KEY)
    token = seks_cli(env, "token", "create", "--secret", "main", "--agent", "bench")
    (work / "broker-ca.pem").write_text(seks_cli(env, "ca", "export") + "\n")
    proc, port, _ = start_seks(procs, env)
    wait_port(proxy_port)

    auth = ["-H", f"Authorization: Bearer {token}"]
    base = [*auth, f"http://127.0.0.1:{port}/api/openai/v1/models"]
    basic = base64.b64encode(f"agent:{token}".encode()).decode()
    proxied = [*auth, "-x", f"http://127.0.0.1:{proxy_port}", "--proxy-header", f"Proxy-Authorization: Basic {basic}",
               "--cacert", str(work / "broker-ca.pem"), f"https://{HOST}/v1/models"]
    # Warm-up: pools, caches, the leaf certificate.
    for target in (base, proxied):
        oha(target, 2000, args.connections)

    rounds = {"base_url": [], "proxy": [], "proxy_new_connections": []}
    for _ in range(args.rounds):
        rounds["base_url"].append(cpu_per_request(proc.pid, base, args.requests, args.connections))
        rounds["proxy"].append(cpu_per_request(proc.pid, proxied, args.requests, args.connections))
        rounds["proxy_new_connections"].append(
            cpu_per_request(proc.pid, proxied, args.handshakes, args.connections, ["--disable-keepalive"]))

    def median(rows, field):
        return statistics.median(r[field] for r in rows)

    table = {name: {f: median(rows, f) for f in ("cpu_us_per_request", "rps", "p50_ms")} for name, rows in rounds.items()}
    base_cpu, proxy_cpu = table["base_url"]["cpu_us_per_request"], table["proxy"]["cpu_us_per_request"]
    handshake = table["proxy_new_connections"]["cpu_us_per_request"] - proxy_cpu
    results = {
        "machine": {"cpus": os.cpu_count(), "load_before": load_average()},
        "settings": vars(args),
        "rounds": rounds,
        "medians": table,
        "proxy_over_base_url_cpu": proxy_cpu / base_cpu,
        "tunnel_setup_cpu_us": handshake,
        "target_met": proxy_cpu <= 1.5 * base_cpu,
    }
    print(f"{'':28} {'CPU µs/req':>11} {'req/s':>9} {'p50 ms':>8}")
    for name, row in table.items():
        print(f"{name:28} {row['cpu_us_per_request']:11.1f} {row['rps']:9.0f} {row['p50_ms']:8.2f}")
    print(f"\nproxy / base-URL broker CPU per request (keep-alive): {proxy_cpu / base_cpu:.2f}"
          f"  (target <= 1.5: {'met' if results['target_met'] else 'MISSED'})")
    print(f"tunnel set-up (CONNECT + TLS handshake + leaf lookup): {handshake:.0f} µs of broker CPU")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
