#!/usr/bin/env python3
"""Build seks with profile-guided optimisation: target/pgo/release/seks.

Builds an instrumented broker (target/pgo-train), runs it through the traffic a broker
carries — chat completions at 32 and 256 connections and at a fixed rate, SSE streams, a
100 MiB download, a token with a policy, unknown and malformed tokens — against the same
local nginx upstream as bench/suite.py, merges the profile it wrote and builds the broker
again with it (`-Cprofile-use`). Same source, same behaviour; the compiler only lays out
and inlines the code by how it ran.

Usage: bench/pgo.py   (as root: installs what bench/suite.py installs, and rustup's
                       llvm-tools for llvm-profdata)
"""
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import harness
from harness import CLIENT_CPU, ECHO_MODULE, ROOT, Processes, ensure_tools, free_port, seks_cli, seks_store, start_nginx, start_seks, wait_port
from suite import REQUEST, Target, oha, upstream_conf

TRAIN_DIR, PGO_DIR = ROOT / "target" / "pgo-train", ROOT / "target" / "pgo"
SECONDS = 4


def llvm_profdata():
    """rustup's llvm-profdata, which reads the profiles this rustc's LLVM writes."""
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], check=True, capture_output=True, text=True).stdout.strip()
    host = next(l.split()[1] for l in subprocess.run(["rustc", "-vV"], check=True, capture_output=True, text=True).stdout.splitlines() if l.startswith("host:"))
    tool = Path(sysroot) / "lib" / "rustlib" / host / "bin" / "llvm-profdata"
    if not tool.exists():
        subprocess.run(["rustup", "component", "add", "llvm-tools"], check=True)
    return tool


def build(target_dir, rustflags):
    env = {**os.environ, "CARGO_TARGET_DIR": str(target_dir), "RUSTFLAGS": rustflags}
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "seks"], cwd=ROOT, env=env, check=True)
    return target_dir / "release" / "seks"


def curl(*args):
    subprocess.run(["taskset", "-c", CLIENT_CPU, "curl", "-s", "-o", "/dev/null", *args], check=True)


def train(binary, work):
    """Run the instrumented `binary` through a broker's traffic; it writes its profile when
    it exits."""
    harness.SEKS = binary
    files = work / "files"
    (files / "v1" / "files").mkdir(parents=True)
    (files / "v1" / "files" / "big").write_bytes(b'{"delta":{"content":"The quick brown fox"}}\n' * (100 * 1024 * 1024 // 44))
    with Processes() as procs:
        upstream_port = free_port()
        start_nginx(procs, work, upstream_conf(upstream_port, files), [ECHO_MODULE])
        wait_port(upstream_port)
        env = seks_store(work / "seks", upstream_port)
        token = seks_cli(env, "token", "create", "--secret", "main")
        policed = seks_cli(env, "token", "create", "--secret", "main", "--allow", "POST /v1/chat/completions",
                           "--allow", "GET /v1/**", "--model", "gpt-4o-mini", "--rpm", "100000000")
        proc, port, _ = start_seks(procs, env)
        seks = Target("seks", port, "/api/openai", token, [proc.pid])
        for connections in (32, 256):
            oha(seks, SECONDS, connections)
        oha(seks, SECONDS, 32, rate=2000)
        oha(Target("seks", port, "/api/openai", policed, [proc.pid]), SECONDS, 32)
        for bad in ("seks_openai_" + "x" * 40, "not-a-token"):
            oha(Target("seks", port, "/api/openai", bad, [proc.pid]), 1, 8)
        stream = seks.url("/v1/stream?hold=0")
        subprocess.run(["taskset", "-c", CLIENT_CPU, "oha", "--no-tui", "-z", f"{SECONDS}s", "-c", "32",
                        "-H", f"Authorization: Bearer {token}", stream], check=True, capture_output=True)
        for _ in range(3):
            curl("-H", f"Authorization: Bearer {token}", seks.url("/v1/files/big"))
        curl("-X", "POST", "-H", f"Authorization: Bearer {token}", "-d", REQUEST, seks.url("/v1/chat/completions"))
        procs.stop(proc)


def build_pgo():
    """Train an instrumented build and build the optimised one; its path."""
    ensure_tools(["nginx", "curl", str(ECHO_MODULE)], oha=True)
    profdata = llvm_profdata()
    raw = TRAIN_DIR / "profiles"
    shutil.rmtree(raw, ignore_errors=True)
    instrumented = build(TRAIN_DIR, f"-Cprofile-generate={raw}")
    work = Path(tempfile.mkdtemp(prefix="seks-pgo-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    try:
        train(instrumented, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    merged = TRAIN_DIR / "seks.profdata"
    subprocess.run([profdata, "merge", "-o", merged, raw], check=True)
    # Cargo doesn't watch the profile: a name of its content makes a new one rebuild all.
    named = TRAIN_DIR / f"seks-{hashlib.sha256(merged.read_bytes()).hexdigest()[:16]}.profdata"
    for old in TRAIN_DIR.glob("seks-*.profdata"):
        old.unlink()
    merged.rename(named)
    return build(PGO_DIR, f"-Cprofile-use={named}")


if __name__ == "__main__":
    print(build_pgo())
