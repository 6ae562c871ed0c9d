#!/usr/bin/env python3
"""End-to-end cost of response scrubbing and of policy, side by side with nginx in one run.

Measures, on this machine:
  1. CPU time (utime+stime from /proc) the proxy spends streaming a 100 MiB response,
     for nginx (header injection, no scrubbing) and for seks with 1 and 1,000 secrets.
     Two bodies: LLM-style JSON lines (escapes, words, digits: the scrubber's real work),
     and blank lines, which give the scrubber nothing to look at: seks's cost of passing
     100 MiB through, as near unscrubbed as the same binary gets;
  2. throughput of small JSON responses (wrk, 32 keep-alive connections) through seks
     with 1 and with 1,000 secrets loaded, and through nginx;
  3. the same throughput with a token under a policy (path rules, models, rate and
     concurrency limits that don't bind, no body rules) against a token without one;
  4. the same throughput with the audit log off, on (batched, the default) and strict.
Servers run on CPU 0, the load generator on CPU 1. Prints a table and writes JSON.

Usage: bench/e2e.py [--out bench/out/e2e.json]   (needs nginx, wrk, curl; a
release build of seks is made if missing)
"""
import argparse
import json
import os
import random
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEKS = ROOT / "target" / "release" / "seks"
KEY = "sk-bench-" + "A1b2C3d4E5f6G7h8I9j0" * 2
POLICY = """
allow = ["GET /v1/small", "GET /v1/big", "GET /v1/blank", "POST /v1/chat/completions", "GET /v1/models/*"]
deny = ["* /v1/files/**", "* /v1/fine_tuning/**", "DELETE /**", "POST /v1/images/**"]
require_approval = ["POST /v1/batches"]
models = ["gpt-4o-mini", "gpt-4o"]
rpm = 1000000
concurrency = 10000
daily_requests = 100000000
"""
TICK = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def load_average():
    return Path("/proc/loadavg").read_text().split()[0]


def ensure_tools():
    missing = [t for t in ("nginx", "wrk", "curl") if shutil.which(t) is None]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx", "wrk", "curl"], check=True)
    if not SEKS.exists():
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)


def nginx(conf_body, work):
    conf = work / f"nginx-{random.randrange(1 << 30)}.conf"
    conf.write_text(
        f"worker_processes 1; daemon off; pid {conf}.pid; error_log stderr error;\n"
        f"events {{ worker_connections 4096; }}\n"
        f"http {{ access_log off; {conf_body} }}\n"
    )
    proc = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", str(conf), "-e", "stderr"])
    return proc


def nginx_worker(master):
    for _ in range(100):
        out = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()
        if out:
            return int(out[0])
        time.sleep(0.05)
    sys.exit("nginx worker not found")


def seks(work, upstream_port, secrets, name, extra_config=""):
    data = work / f"seks-{name}"
    data.mkdir()
    config = data / "seks.toml"
    config.write_text(f'[providers.openai]\nbase_url = "http://127.0.0.1:{upstream_port}"\n{extra_config}')
    env = dict(os.environ, SEKS_DATA_DIR=str(data), SEKS_CONFIG=str(config), SEKS_LOG="warn")
    env.pop("SEKS_MASTER_KEY", None)
    for i in range(secrets - 1):
        filler = "sk-filler-" + "".join(random.choices(string.ascii_letters + string.digits, k=40))
        subprocess.run([SEKS, "secret", "add", f"filler{i}", "--provider", "openai"], input=filler.encode(), env=env, check=True, capture_output=True)
    subprocess.run([SEKS, "secret", "add", "main", "--provider", "openai"], input=KEY.encode(), env=env, check=True, capture_output=True)
    token = subprocess.run([SEKS, "token", "create", "--secret", "main"], env=env, check=True, capture_output=True, text=True).stdout.strip()
    policy_file = data / "policy.toml"
    policy_file.write_text(POLICY)
    policy_token = subprocess.run(
        [SEKS, "token", "create", "--secret", "main", "--policy", str(policy_file)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0", SEKS, "serve", "--listen", f"127.0.0.1:{port}", "--admin-listen", "off"], env=env)
    wait_port(port)
    return proc, port, token, policy_token


def download_cpu(pid, url, auth, runs):
    """CPU seconds per 100 MiB download, after one warm-up."""
    cmd = ["taskset", "-c", "1", "curl", "-sf", "-o", "/dev/null", "-H", f"Authorization: Bearer {auth}", url]
    subprocess.run(cmd, check=True)
    before = cpu_seconds(pid)
    for _ in range(runs):
        subprocess.run(cmd, check=True)
    return (cpu_seconds(pid) - before) / runs


def wrk_rps(url, auth, seconds):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "-H", f"Authorization: Bearer {auth}", url],
        capture_output=True, text=True, check=True,
    ).stdout
    errors = [l for l in out.splitlines() if "Non-2xx" in l or "Socket errors" in l]
    if errors:
        sys.exit(f"wrk saw errors: {errors}\n{out}")
    return float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "e2e.json"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--audit-only", action="store_true", help="only the audit on/off/strict throughput rows")
    args = parser.parse_args()
    ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="seks-bench-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    procs = []
    try:
        files = work / "files" / "v1"
        files.mkdir(parents=True)
        line = b'{"delta":{"content":"The quick brown fox jumps over the lazy dog\\n"}}\n'
        with open(files / "big", "wb") as f:
            f.write((line * (100 * 1024 * 1024 // len(line) + 1))[: 100 * 1024 * 1024])
        with open(files / "blank", "wb") as f:
            f.write((b" " * 63 + b"\n") * (100 * 1024 * 1024 // 64))
        (files / "small").write_text(json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}], "usage": {"total_tokens": 9}}))
        upstream_port, proxy_port = free_port(), free_port()
        upstream = nginx(f"server {{ listen 127.0.0.1:{upstream_port}; root {work / 'files'}; default_type application/json; }}", work)
        procs.append(upstream)
        proxy = nginx(
            f"upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n"
            f"server {{ listen 127.0.0.1:{proxy_port}; location / {{ proxy_pass http://up; proxy_http_version 1.1;"
            f' proxy_set_header Connection ""; proxy_set_header Authorization "Bearer {KEY}"; }} }}',
            work,
        )
        procs.append(proxy)
        wait_port(upstream_port)
        wait_port(proxy_port)
        results = {"machine": {"cpus": os.cpu_count(), "load_before": load_average()}, "rows": {}}
        rows = results["rows"]
        worker = nginx_worker(proxy)
        rows["nginx"] = {"small_json_rps": wrk_rps(f"http://127.0.0.1:{proxy_port}/v1/small", "x", args.seconds)}
        ratios = results["ratios"] = {}
        if not args.audit_only:
            rows["nginx"]["cpu_ms_per_100MiB"] = 1000 * download_cpu(worker, f"http://127.0.0.1:{proxy_port}/v1/big", "x", args.runs)
            rows["nginx"]["cpu_ms_per_100MiB_blank"] = 1000 * download_cpu(worker, f"http://127.0.0.1:{proxy_port}/v1/blank", "x", args.runs)
            for secrets in (1, 1000):
                proc, port, token, policy_token = seks(work, upstream_port, secrets, secrets)
                procs.append(proc)
                base = f"http://127.0.0.1:{port}/api/openai"
                rows[f"seks ({secrets} secret{'s' if secrets > 1 else ''})"] = {
                    "cpu_ms_per_100MiB": 1000 * download_cpu(proc.pid, f"{base}/v1/big", token, args.runs),
                    "cpu_ms_per_100MiB_blank": 1000 * download_cpu(proc.pid, f"{base}/v1/blank", token, args.runs),
                    "small_json_rps": wrk_rps(f"{base}/v1/small", token, args.seconds),
                }
                if secrets == 1:
                    rows["seks (1 secret, token with policy)"] = {
                        "cpu_ms_per_100MiB": 1000 * download_cpu(proc.pid, f"{base}/v1/big", policy_token, args.runs),
                        "cpu_ms_per_100MiB_blank": 1000 * download_cpu(proc.pid, f"{base}/v1/blank", policy_token, args.runs),
                        "small_json_rps": wrk_rps(f"{base}/v1/small", policy_token, args.seconds),
                    }
                proc.terminate()
                proc.wait()
            one, many, ng = rows["seks (1 secret)"], rows["seks (1000 secrets)"], rows["nginx"]
            with_policy = rows["seks (1 secret, token with policy)"]
            ratios.update({
                "rps_policy_token_over_plain_token": with_policy["small_json_rps"] / one["small_json_rps"],
                "rps_1000_secrets_over_1": many["small_json_rps"] / one["small_json_rps"],
                "cpu_100MiB_seks_1_secret_json_over_blank": one["cpu_ms_per_100MiB"] / one["cpu_ms_per_100MiB_blank"],
                "cpu_100MiB_seks_1000_secrets_json_over_blank": many["cpu_ms_per_100MiB"] / many["cpu_ms_per_100MiB_blank"],
                "cpu_100MiB_seks_1_secret_over_nginx": one["cpu_ms_per_100MiB"] / ng["cpu_ms_per_100MiB"],
                "cpu_100MiB_seks_1000_secrets_over_nginx": many["cpu_ms_per_100MiB"] / ng["cpu_ms_per_100MiB"],
            })
        # The audit log's cost: the same token and answer with the log on (the default), off
        # and strict, in alternation so drifting machine load hits all three alike.
        variants = (("on", ""), ("off", "enabled = false"), ("strict", 'durability = "strict"'))
        servers = {}
        for name, audit in variants:
            proc, port, token, _ = seks(work, upstream_port, 1, f"audit-{name}", f"[audit]\n{audit}\n")
            procs.append(proc)
            servers[name] = (f"http://127.0.0.1:{port}/api/openai/v1/small", token)
        samples = {name: [] for name, _ in variants}
        for _ in range(3):
            for name, _ in variants:
                samples[name].append(wrk_rps(*servers[name], max(2, args.seconds // 3)))
        for name, _ in variants:
            rows[f"seks (audit {name})"] = {"small_json_rps": sum(samples[name]) / len(samples[name])}
        off = rows["seks (audit off)"]["small_json_rps"]
        ratios["rps_audit_on_over_off"] = rows["seks (audit on)"]["small_json_rps"] / off
        ratios["rps_audit_strict_over_off"] = rows["seks (audit strict)"]["small_json_rps"] / off
        ratios["rps_seks_audit_on_over_nginx"] = rows["seks (audit on)"]["small_json_rps"] / rows["nginx"]["small_json_rps"]
        results["machine"]["load_after"] = load_average()
        print(f"{'target':36} {'CPU ms/100 MiB JSON':>20} {'CPU ms/100 MiB blank':>21} {'small JSON req/s':>17}")
        for name, row in rows.items():
            cpu = lambda key: f"{row[key]:.1f}" if key in row else "-"
            print(f"{name:36} {cpu('cpu_ms_per_100MiB'):>20} {cpu('cpu_ms_per_100MiB_blank'):>21} {row['small_json_rps']:17.0f}")
        for name, value in ratios.items():
            print(f"{name:45} {value:6.2f}")
        print(f"load average before/after: {results['machine']['load_before']} / {results['machine']['load_after']}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
