#!/usr/bin/env python3
"""Build seks with profile-guided optimisation: target/pgo/release/seks (with --floor, the
suite's hyper floor too, the same way, for a fair comparison: target/pgo-floor/).

Builds each instrumented (target/pgo-train, target/pgo-floor-train), runs them through the
traffic a broker carries — chat completions at 32 and 256 connections and at a fixed rate,
SSE streams, a 100 MiB download; for seks also a token with a policy, unknown and malformed
tokens — against the same local nginx upstream as bench/suite.py, merges the profiles they
wrote and builds them again with it (`-Cprofile-use`). Same source, same behaviour; the
compiler only lays out and inlines the code by how it ran.

Usage: bench/pgo.py [--floor]   (as root: installs what bench/suite.py installs, and
                                 rustup's llvm-tools for llvm-profdata)
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
from harness import CLIENT_CPU, ECHO_MODULE, ROOT, Processes, ensure_tools, free_port, seks_cli, seks_store, start_nginx, start_seks, wait_port
from suite import Target, oha, upstream_conf

TRAIN_DIR, PGO_DIR = ROOT / "target" / "pgo-train", ROOT / "target" / "pgo"
FLOOR_TRAIN_DIR, FLOOR_DIR = ROOT / "target" / "pgo-floor-train", ROOT / "target" / "pgo-floor"
SEKS, FLOOR = ("--bin", "seks"), ("--example", "hyper_floor")
SECONDS = 4


def llvm_profdata():
    """rustup's llvm-profdata, which reads the profiles this rustc's LLVM writes."""
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], check=True, capture_output=True, text=True).stdout.strip()
    host = next(l.split()[1] for l in subprocess.run(["rustc", "-vV"], check=True, capture_output=True, text=True).stdout.splitlines() if l.startswith("host:"))
    tool = Path(sysroot) / "lib" / "rustlib" / host / "bin" / "llvm-profdata"
    if not tool.exists():
        subprocess.run(["rustup", "component", "add", "llvm-tools"], check=True)
    return tool


def build(target_dir, rustflags, kind, name):
    """The binary `name` (`kind`: cargo's `--bin` or `--example`) built with `rustflags` into
    `target_dir`; its path."""
    env = {**os.environ, "CARGO_TARGET_DIR": str(target_dir), "RUSTFLAGS": rustflags}
    subprocess.run(["cargo", "build", "--release", "--locked", kind, name], cwd=ROOT, env=env, check=True)
    return target_dir / "release" / ("examples" if kind == "--example" else "") / name


def curl(*args):
    subprocess.run(["taskset", "-c", CLIENT_CPU, "curl", "-s", "-o", "/dev/null", *args], check=True)


def exercise(target):
    """What every proxy here carries: chat completions, SSE streams, downloads."""
    for connections in (32, 256):
        oha(target, SECONDS, connections)
    oha(target, SECONDS, 32, rate=2000)
    auth = f"Authorization: Bearer {target.auth}"
    subprocess.run(["taskset", "-c", CLIENT_CPU, "oha", "--no-tui", "-z", f"{SECONDS}s", "-c", "32", "-H", auth,
                    target.url("/v1/stream?hold=0")], check=True, capture_output=True)
    for _ in range(3):
        curl("-H", auth, target.url("/v1/files/big"))


def train(seks_binary, floor_binary, work):
    """Run the instrumented binaries (the floor's if there is one) through a broker's
    traffic; each writes its profile when it exits."""
    harness.SEKS = seks_binary
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
        exercise(Target("seks", port, "/api/openai", token, [proc.pid]))
        oha(Target("seks", port, "/api/openai", policed, [proc.pid]), SECONDS, 32)
        for bad in ("seks_openai_" + "x" * 40, "not-a-token"):
            oha(Target("seks", port, "/api/openai", bad, [proc.pid]), 1, 8)
        procs.stop(proc)
        if floor_binary is None:
            return
        floor_port = free_port()
        floor = procs.start([floor_binary, floor_port, upstream_port])
        wait_port(floor_port)
        exercise(Target("floor", floor_port, "/api/openai", token, [floor.pid]))
        procs.stop(floor)


def build_pgo(floor=False):
    """Train instrumented builds and build the optimised ones: seks's path, and the floor's
    if asked for."""
    ensure_tools(["nginx", "curl", str(ECHO_MODULE)], oha=True)
    profdata = llvm_profdata()
    raw = TRAIN_DIR / "profiles"
    shutil.rmtree(raw, ignore_errors=True)
    # Each in its own target directory, built the same way twice: an example turns on the
    # dev-dependencies' features (tokio's test-util), which the broker's build must not
    # carry, and a profile fits only code built as the instrumented one was.
    builds = [(TRAIN_DIR, PGO_DIR, SEKS)] + [(FLOOR_TRAIN_DIR, FLOOR_DIR, FLOOR)] * floor
    instrumented = [build(trained, f"-Cprofile-generate={raw}", *what) for trained, _, what in builds]
    work = Path(tempfile.mkdtemp(prefix="seks-pgo-"))
    work.chmod(0o755)  # nginx workers run unprivileged
    try:
        train(instrumented[0], instrumented[1] if floor else None, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    merged = TRAIN_DIR / "seks.profdata"
    subprocess.run([profdata, "merge", "-o", merged, raw], check=True)
    # Cargo doesn't watch the profile: a name of its content makes a new one rebuild all.
    named = TRAIN_DIR / f"seks-{hashlib.sha256(merged.read_bytes()).hexdigest()[:16]}.profdata"
    for old in TRAIN_DIR.glob("seks-*.profdata"):
        old.unlink()
    merged.rename(named)
    return [build(built, f"-Cprofile-use={named}", *what) for _, built, what in builds]


if __name__ == "__main__":
    print(*build_pgo(floor="--floor" in sys.argv[1:]), sep="\n")
