"""A small in-memory S3 that checks every request's AWS SigV4 signature against the REAL
key pair, the way S3 does, using botocore's own signer as the reference (so the broker's
Rust signer is checked by an independent implementation).

Usage: s3_mock.py ACCESS_KEY_ID SECRET_ACCESS_KEY REGION
Prints `PORT <n>` once listening. Serves PutObject, GetObject, ListObjectsV2 and multipart
uploads on path-style URLs, with signed, unsigned and STREAMING-AWS4-HMAC-SHA256-PAYLOAD
bodies. `GET /__stats` (unsigned) returns counters as JSON, bodies cut short counted apart
from bad signatures. A GetObject of key `leak`
answers with the secret access key in the body, as a misbehaving upstream would.
"""
import hashlib
import hmac
import json
import sys
import threading
import xml.sax.saxutils as saxutils
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY, SECRET_KEY, REGION = sys.argv[1:4]
STREAMING = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

objects = {}
uploads = {}
stats = {"requests": 0, "verified": 0, "bad_signatures": 0, "truncated": 0, "chunked_uploads": 0, "seks_tokens_seen": 0}
lock = threading.Lock()


def parse_authorization(value):
    algorithm, _, rest = value.partition(" ")
    fields = dict(part.strip().split("=", 1) for part in rest.split(","))
    key_id, date, region, service, _ = fields["Credential"].split("/")
    return algorithm, key_id, date, region, service, fields["SignedHeaders"].split(";"), fields["Signature"]


def expected_signature(handler, signed_headers, region, service):
    """Signature botocore computes for this request with the real key."""
    headers = {name: handler.headers[name] for name in signed_headers}
    request = AWSRequest(method=handler.command, url=f"http://{handler.headers['host']}{handler.path}", headers=headers)
    request.context["timestamp"] = handler.headers["x-amz-date"]
    auth = S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), service, region)
    canonical = auth.canonical_request(request)
    string_to_sign = auth.string_to_sign(request, canonical)
    return auth.signature(string_to_sign, request), auth


def signing_key(date, region, service):
    key = ("AWS4" + SECRET_KEY).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def decode_chunks(body, seed, amz_date, scope):
    """The data of an aws-chunked body, each chunk's signature checked on the real key's chain."""
    date, region, service = scope.split("/")[:3]
    key = signing_key(date, region, service)
    previous, data, at = seed, b"", 0
    while True:
        end = body.index(b"\r\n", at)
        size_hex, _, signature = body[at:end].decode().partition(";chunk-signature=")
        size = int(size_hex, 16)
        chunk = body[end + 2 : end + 2 + size]
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY_SHA256, hashlib.sha256(chunk).hexdigest()])
        previous = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(previous, signature):
            raise ValueError("chunk signature mismatch")
        data += chunk
        at = end + 2 + size + 2
        if size == 0:
            if at != len(body):
                raise ValueError("data after the final chunk")
            return data


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", content_type="application/xml", extra=()):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, code, message):
        body = f"<Error><Code>{code}</Code><Message>{saxutils.escape(message)}</Message></Error>"
        self.reply(status, body.encode())

    def read_body(self):
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def authenticate(self, body):
        """The body's data if the request is signed by the real key; None after replying."""
        if any("seks_" in value for value in self.headers.values()) or "seks_" in self.path:
            with lock:
                stats["seks_tokens_seen"] += 1
        try:
            algorithm, key_id, date, region, service, signed, signature = parse_authorization(self.headers["authorization"])
        except (KeyError, ValueError):
            self.error(403, "AccessDenied", "no valid Authorization header")
            return None
        expected, _ = expected_signature(self, signed, region, service)
        ok = algorithm == "AWS4-HMAC-SHA256" and key_id == ACCESS_KEY and hmac.compare_digest(expected, signature)
        payload = self.headers.get("x-amz-content-sha256", "")
        if ok and payload == STREAMING:
            try:
                body = decode_chunks(body, signature, self.headers["x-amz-date"], f"{date}/{region}/{service}/aws4_request")
                with lock:
                    stats["chunked_uploads"] += 1
            except ValueError:
                ok = False
        elif ok and payload not in ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"):
            ok = hashlib.sha256(body).hexdigest() == payload
        if not ok:
            with lock:
                stats["bad_signatures"] += 1
            # Like S3, quote the key id back; the broker must not let it leak as-is.
            self.error(403, "SignatureDoesNotMatch", f"signature does not match for {key_id} on {self.path}")
            return None
        with lock:
            stats["verified"] += 1
        return body

    def route(self):
        with lock:
            stats["requests"] += 1
        if self.path == "/__stats":
            with lock:
                return self.reply(200, json.dumps(stats).encode(), "application/json")
        body = self.read_body()
        if len(body) < int(self.headers.get("content-length") or 0):
            # The sender gave up mid-body (the broker stops a forged chunked upload so).
            with lock:
                stats["truncated"] += 1
            return
        data = self.authenticate(body)
        if data is None:
            return
        path, _, query = self.path.partition("?")
        params = parse_qs(query, keep_blank_values=True)
        bucket, _, key = unquote(path.lstrip("/")).partition("/")
        if self.command == "PUT" and "uploadId" in params:
            uploads[params["uploadId"][0]][int(params["partNumber"][0])] = data
            return self.reply(200, extra=[("ETag", f'"{hashlib.md5(data).hexdigest()}"')])
        if self.command == "PUT":
            objects[(bucket, key)] = data
            return self.reply(200, extra=[("ETag", f'"{hashlib.md5(data).hexdigest()}"')])
        if self.command == "POST" and "uploads" in params:
            upload_id = f"upload-{len(uploads) + 1}"
            uploads[upload_id] = {}
            xml = f"<InitiateMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{saxutils.escape(key)}</Key><UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>"
            return self.reply(200, xml.encode())
        if self.command == "POST" and "uploadId" in params:
            parts = uploads.pop(params["uploadId"][0])
            objects[(bucket, key)] = b"".join(parts[n] for n in sorted(parts))
            xml = f"<CompleteMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{saxutils.escape(key)}</Key><ETag>\"done\"</ETag></CompleteMultipartUploadResult>"
            return self.reply(200, xml.encode())
        if self.command == "GET" and not key and params.get("list-type") == ["2"]:
            prefix = params.get("prefix", [""])[0]
            keys = sorted(k for (b, k) in objects if b == bucket and k.startswith(prefix))
            contents = "".join(f"<Contents><Key>{saxutils.escape(k)}</Key><Size>{len(objects[(bucket, k)])}</Size></Contents>" for k in keys)
            xml = f"<ListBucketResult><Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(keys)}</KeyCount><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
            return self.reply(200, xml.encode())
        if self.command in ("GET", "HEAD") and key == "leak":
            return self.reply(200, f"debug dump: key={SECRET_KEY}".encode(), "text/plain")
        if self.command in ("GET", "HEAD") and (bucket, key) in objects:
            return self.reply(200, objects[(bucket, key)], "application/octet-stream")
        self.error(404, "NoSuchKey", "The specified key does not exist.")

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = route


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
