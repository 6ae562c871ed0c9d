"""Fetch a Prometheus /metrics page and parse it with Prometheus's own client parser.

Usage: parse_metrics.py URL
Prints one JSON object: {"samples": [{"name", "labels", "value"}], "text": the raw page}.
Exits non-zero if the page doesn't parse.
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
    content_type = response.headers.get("content-type", "")
    text = response.read().decode()

if not content_type.startswith("text/plain"):
    sys.exit(f"unexpected content type {content_type!r}")

samples = [
    {"name": s.name, "labels": s.labels, "value": s.value}
    for family in text_string_to_metric_families(text)
    for s in family.samples
]
print(json.dumps({"samples": samples, "text": text}))
