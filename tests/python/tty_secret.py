"""Type a secret at `seks secret add`'s prompt on a real pseudo-terminal.

Usage: tty_secret.py SEKS_BINARY NAME VALUE   (env: SEKS_DATA_DIR, SEKS_CONFIG)
Checks the prompt appears, the typed value is not echoed, and the command succeeds.
"""
import os
import pty
import sys
import termios
import time

seks, name, value = sys.argv[1:4]
pid, fd = pty.fork()
if pid == 0:
    os.execv(seks, [seks, "secret", "add", name, "--provider", "openai"])

out = b""
deadline = time.time() + 30
while b"Value for secret" not in out:
    assert time.time() < deadline, f"no prompt: {out!r}"
    out += os.read(fd, 1024)
# The prompt is printed just before echo is turned off: type only once it is, as a person would
# (anything typed earlier is echoed by the terminal, not by seks).
while termios.tcgetattr(fd)[3] & termios.ECHO:
    assert time.time() < deadline, "echo never turned off"
    time.sleep(0.01)
os.write(fd, value.encode() + b"\r")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:  # the child closed the terminal
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, out
assert value.encode() not in out, f"the secret was echoed: {out!r}"
assert b"stored secret" in out, out
print("ok")
