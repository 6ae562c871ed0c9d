"""Validate an OpenAPI document with openapi-spec-validator.

Usage: openapi_check.py FILE   (exits non-zero, with the validator's reason, if invalid)
"""
import json
import sys

from openapi_spec_validator import validate

with open(sys.argv[1]) as f:
    document = json.load(f)
validate(document)
print("valid", document["openapi"], len(document["paths"]), "paths")
