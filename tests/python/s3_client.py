"""The official boto3 S3 client through the broker, with the key pair `seks token create`
gave the agent (access key id = token id, secret access key = token).

Usage: s3_client.py BROKER_URL ACCESS_KEY_ID SECRET_ACCESS_KEY
Runs put/get/list, a multipart upload (explicit and managed), an aws-chunked streaming
upload signed chunk by chunk, then the refusals: a wrong secret, a forged chunk, a replayed
request and a stale one. Prints one JSON object of results.
"""
import datetime
import hashlib
import hmac
import io
import json
import sys
import time
import urllib.error
import urllib.request

import boto3
import botocore.auth
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from boto3.s3.transfer import TransferConfig

BROKER, KEY_ID, SECRET = sys.argv[1:4]
ENDPOINT = BROKER + "/api/s3"
REGION = "us-east-1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def client(secret=SECRET):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=secret,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def error_code(call):
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None


class StreamingS3Auth(S3SigV4Auth):
    """S3 signing of a body framed as signed aws-chunked, which botocore can't send itself."""

    def payload(self, request):
        return "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"


def signed_request(method, path, headers=None, when=None, auth=S3SigV4Auth):
    """A bodiless request signed by botocore with the agent's key, to send by hand."""
    request = AWSRequest(method=method, url=ENDPOINT + path, data=b"", headers=headers or {})
    original = botocore.auth.get_current_datetime
    if when is not None:
        botocore.auth.get_current_datetime = lambda remove_tzinfo=True: when
    try:
        auth(Credentials(KEY_ID, SECRET), "s3", REGION).add_auth(request)
    finally:
        botocore.auth.get_current_datetime = original
    return request


def send(request, body=None):
    data = body if body is not None else request.body
    raw = urllib.request.Request(request.url, data=data or None, method=request.method, headers=dict(request.headers.items()))
    try:
        with urllib.request.urlopen(raw) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def chunked_upload(key, data, chunk_size, forge_chunk=None):
    """PUT with STREAMING-AWS4-HMAC-SHA256-PAYLOAD, as the AWS CLI and Java SDK send it."""
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]
    framed_len = sum(len(f"{len(c):x};chunk-signature=") + 64 + 2 + len(c) + 2 for c in chunks)
    headers = {
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "content-length": str(framed_len),
    }
    request = signed_request("PUT", f"/bucket/{key}", headers, auth=StreamingS3Auth)
    auth = request.headers["Authorization"]
    seed = auth.rsplit("Signature=", 1)[1]
    amz_date = request.headers["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    signing_key = ("AWS4" + SECRET).encode()
    for part in (amz_date[:8], REGION, "s3", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    body, previous = b"", seed
    for n, chunk in enumerate(chunks):
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY_SHA256, hashlib.sha256(chunk).hexdigest()])
        previous = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        signature = "0" * 64 if n == forge_chunk else previous
        body += f"{len(chunk):x};chunk-signature={signature}\r\n".encode() + chunk + b"\r\n"
    assert len(body) == framed_len
    return send(request, body)


def main():
    results = {}
    s3 = client()
    s3.put_object(Bucket="bucket", Key="notes/hello world.txt", Body=b"hello through the broker")
    results["get"] = s3.get_object(Bucket="bucket", Key="notes/hello world.txt")["Body"].read().decode()
    listed = s3.list_objects_v2(Bucket="bucket", Prefix="notes/")
    results["listed"] = [o["Key"] for o in listed.get("Contents", [])]

    parts = [b"a" * (5 * 1024 * 1024), b"b" * 1024]
    upload = s3.create_multipart_upload(Bucket="bucket", Key="big.bin")
    etags = [
        s3.upload_part(Bucket="bucket", Key="big.bin", UploadId=upload["UploadId"], PartNumber=n + 1, Body=part)["ETag"]
        for n, part in enumerate(parts)
    ]
    s3.complete_multipart_upload(
        Bucket="bucket",
        Key="big.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n + 1} for n, e in enumerate(etags)]},
    )
    big = s3.get_object(Bucket="bucket", Key="big.bin")["Body"].read()
    results["multipart_ok"] = big == b"".join(parts)
    managed = bytes(range(256)) * (6 * 4096 + 7)
    s3.upload_fileobj(io.BytesIO(managed), "bucket", "managed.bin", Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
    results["managed_ok"] = s3.get_object(Bucket="bucket", Key="managed.bin")["Body"].read() == managed

    streamed = bytes(range(256)) * 700
    results["chunked_status"] = chunked_upload("streamed.bin", streamed, 64 * 1024)[0]
    results["chunked_ok"] = s3.get_object(Bucket="bucket", Key="streamed.bin")["Body"].read() == streamed
    status, body = chunked_upload("forged.bin", streamed, 64 * 1024, forge_chunk=1)
    results["forged_chunk"] = [status, body.decode(errors="replace")]

    results["leak"] = s3.get_object(Bucket="bucket", Key="leak")["Body"].read().decode()
    results["wrong_secret"] = error_code(lambda: client(secret=SECRET[:-1] + ("y" if SECRET.endswith("x") else "x")).get_object(Bucket="bucket", Key="notes/hello world.txt"))

    request = signed_request("GET", "/bucket/notes/hello%20world.txt")
    results["first_send"] = send(request)[0]
    results["same_second_copy"] = send(request)[0]
    time.sleep(2.5)
    status, body = send(request)
    results["replayed"] = [status, body.decode(errors="replace")]
    stale = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=10)
    status, body = send(signed_request("GET", "/bucket/notes/hello%20world.txt", when=stale))
    results["stale"] = [status, body.decode(errors="replace")]
    print(json.dumps(results))


main()
