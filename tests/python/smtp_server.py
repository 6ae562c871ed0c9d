"""A real SMTP server on loopback for the email capability tests (aiosmtpd).

Usage: smtp_server.py EVENTS_FILE CERT KEY USER PASSWORD

Requires STARTTLS before AUTH and AUTH (PLAIN or LOGIN, checked against USER and PASSWORD)
before mail. Appends one JSON line to EVENTS_FILE per EHLO ({"event": "ehlo"}), failed login
({"event": "auth_failed"}) and delivered message ({"event": "message", "from", "to",
"login", "data"}). Prints "READY <port>" once it listens, and runs until killed.
"""

import json
import socket
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

events_file, cert, key, user, password = sys.argv[1:6]


def record(event: dict) -> None:
    with open(events_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


class Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        record({"event": "ehlo"})
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        record(
            {
                "event": "message",
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "login": session.login_data.decode() if session.login_data else None,
                "data": envelope.content.decode("utf-8", "replace"),
            }
        )
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == user
        and auth_data.password.decode() == password
    )
    if not ok:
        record({"event": "auth_failed"})
    return AuthResult(success=ok, handled=False)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
port = free_port()
controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=port,
    server_hostname="localhost",
    tls_context=context,
    require_starttls=True,
    authenticator=authenticator,
    auth_required=True,
    auth_require_tls=True,
)
controller.start()
print(f"READY {port}", flush=True)
while True:
    time.sleep(3600)
