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
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import (
    CLIENT_CPU, ROOT, Processes, cpu_seconds, ensure_tools, free_port, load_average, nginx_proxy_conf,
    seks_cli, seks_store, start_nginx, start_seks, wait_port,
)

POLICY = """
allow = ["GET /v1/small", "GET /v1/big", "GET /v1/blank", "POST /v1/chat/completions", "GET /v1/models/*"]
deny = ["* /v1/files/**", "* /v1/fine_tuning/**", "DELETE /**", "POST /v1/images/**"]
require_approval = ["POST /v1/batches"]
models = ["gpt-4o-mini", "gpt-4o"]
rpm = 1000000
concurrency = 10000
daily_requests = 100000000
"""


def seks(procs, work, upstream_port, secrets, name, extra_config=""):
    """A broker with `secrets` secrets, a plain token and one under POLICY."""
    data = work / f"seks-{name}"
    env = seks_store(data, upstream_port, secrets, extra_config)
    token = seks_cli(env, "token", "create", "--secret", "main")
    policy_file = data / "policy.toml"
    policy_file.write_text(POLICY)
    policy_token = seks_cli(env, "token", "create", "--secret", "main", "--policy", str(policy_file))
    proc, port, _ = start_seks(procs, env)
    return proc, port, token, policy_token


def download_cpu(pid, url, auth, runs):
    """CPU seconds per 100 MiB download, after one warm-up."""
    cmd = ["taskset", "-c", CLIENT_CPU, "curl", "-sf", "-o", "/dev/null", "-H", f"Authorization: Bearer {auth}", url]
    subprocess.run(cmd, check=True)
    before = cpu_seconds(pid)
    for _ in range(runs):
        subprocess.run(cmd, check=True)
    return (cpu_seconds(pid) - before) / runs


def wrk_rps(url, auth, seconds):
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", "-c32", f"-d{seconds}s", "-H", f"Authorization: Bearer {auth}", url],
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
    ensure_tools(["nginx", "wrk", "curl"])
    work = Path(tempfile.mkdtemp(prefix="seks-bench-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    try:
        with Processes() as procs:
            run(args, work, procs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work, procs):
    """Start the servers, measure, print the table and write the JSON."""
    files = work / "files" / "v1"
    files.mkdir(parents=True)
    line = b'{"delta":{"content":"The quick brown fox jumps over the lazy dog\\n"}}\n'
    with open(files / "big", "wb") as f:
        f.write((line * (100 * 1024 * 1024 // len(line) + 1))[: 100 * 1024 * 1024])
    with open(files / "blank", "wb") as f:
        f.write((b" " * 63 + b"\n") * (100 * 1024 * 1024 // 64))
    (files / "small").write_text(json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}], "usage": {"total_tokens": 9}}))
    upstream_port, proxy_port = free_port(), free_port()
    start_nginx(procs, work, f"server {{ listen 127.0.0.1:{upstream_port}; root {work / 'files'}; default_type application/json; }}")
    _, worker = start_nginx(procs, work, nginx_proxy_conf(proxy_port, upstream_port))
    wait_port(upstream_port)
    wait_port(proxy_port)
    results = {"machine": {"cpus": os.cpu_count(), "load_before": load_average()}, "rows": {}}
    rows = results["rows"]
    rows["nginx"] = {"small_json_rps": wrk_rps(f"http://127.0.0.1:{proxy_port}/v1/small", "x", args.seconds)}
    ratios = results["ratios"] = {}
    if not args.audit_only:
        rows["nginx"]["cpu_ms_per_100MiB"] = 1000 * download_cpu(worker, f"http://127.0.0.1:{proxy_port}/v1/big", "x", args.runs)
        rows["nginx"]["cpu_ms_per_100MiB_blank"] = 1000 * download_cpu(worker, f"http://127.0.0.1:{proxy_port}/v1/blank", "x", args.runs)
        for secrets in (1, 1000):
            proc, port, token, policy_token = seks(procs, work, upstream_port, secrets, secrets)
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
            procs.stop(proc)
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
        _, port, token, _ = seks(procs, work, upstream_port, 1, f"audit-{name}", f"[audit]\n{audit}\n")
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


if __name__ == "__main__":
    main()
