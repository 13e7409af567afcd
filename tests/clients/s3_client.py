"""S3 traffic for tests/s3.rs: boto3 as the real AWS signer (SigV4, path-style addressing).

Prints JSON of what it sent and what it got back; the verdicts are the Rust test's.

  s3_client.py --endpoint URL [--ca FILE] roundtrip KEYS_JSON
      PUT then GET each key of the JSON list in bucket "bucket".
  s3_client.py --endpoint URL [--ca FILE] tamper KEY
      PUT signed for KEY, but the path changed after signing (a proxy that rewrites paths).
  s3_client.py --endpoint URL presign KEY [--v2]
      A presigned GET URL (SigV4 by default, SigV2 with --v2), not fetched.

Each request's target is what boto3 handed to the HTTP layer after signing (the
`before-send` event): the path and query the server must receive unchanged.
"""

import argparse
import json
import sys
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ACCESS_KEY = "PACHGATESTANDIN00001"
SECRET_KEY = "pachgate+standin/secret+not+for+any+real+use"
BUCKET = "bucket"


def client(endpoint, ca, signature_version="s3v4"):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        verify=ca if ca else True,
        config=Config(
            signature_version=signature_version,
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},
        ),
    )


def target_of(url):
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


class Recorder:
    """Keeps the target of every request boto3 sends; optionally tampers with it."""

    def __init__(self, s3, tamper=False):
        self.targets = []
        self.tamper = tamper
        s3.meta.events.register("before-send.s3.*", self.before_send)

    def before_send(self, request, **_):
        if self.tamper:
            parts = urlsplit(request.url)
            request.url = urlunsplit(parts._replace(path=parts.path + "-tampered"))
        self.targets.append(target_of(request.url))

    def last(self):
        return self.targets[-1] if self.targets else None


def call(recorder, fn, **kwargs):
    """One request: its status, S3 error code, target and (for GET) body."""
    try:
        response = fn(**kwargs)
        body = response["Body"].read() if "Body" in response else None
        return {
            "status": response["ResponseMetadata"]["HTTPStatusCode"],
            "code": None,
            "target": recorder.last(),
            "body": body.decode("utf-8", "surrogateescape") if body is not None else None,
        }
    except ClientError as error:
        return {
            "status": error.response["ResponseMetadata"]["HTTPStatusCode"],
            "code": error.response.get("Error", {}).get("Code"),
            "target": recorder.last(),
            "body": None,
        }


def body_for(key):
    return f"object stored under {key!r}\n".encode()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--ca")
    sub = parser.add_subparsers(dest="command", required=True)
    roundtrip = sub.add_parser("roundtrip")
    roundtrip.add_argument("keys_json")
    tamper = sub.add_parser("tamper")
    tamper.add_argument("key")
    presign = sub.add_parser("presign")
    presign.add_argument("key")
    presign.add_argument("--v2", action="store_true")
    args = parser.parse_args()

    if args.command == "roundtrip":
        s3 = client(args.endpoint, args.ca)
        recorder = Recorder(s3)
        results = []
        for key in json.loads(args.keys_json):
            put = call(recorder, s3.put_object, Bucket=BUCKET, Key=key, Body=body_for(key))
            get = call(recorder, s3.get_object, Bucket=BUCKET, Key=key)
            get["body_matches"] = get["body"] == body_for(key).decode()
            results.append({"key": key, "put": put, "get": get})
        json.dump(results, sys.stdout, ensure_ascii=False)
    elif args.command == "tamper":
        s3 = client(args.endpoint, args.ca)
        recorder = Recorder(s3, tamper=True)
        json.dump(
            call(recorder, s3.put_object, Bucket=BUCKET, Key=args.key, Body=body_for(args.key)),
            sys.stdout,
        )
    else:
        s3 = client(args.endpoint, args.ca, "s3" if args.v2 else "s3v4")
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": args.key}, ExpiresIn=600
        )
        json.dump({"url": url, "target": target_of(url)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
