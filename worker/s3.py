"""The S3 client of the adapter store, shared by the agent (fetching) and the trainer (publishing)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit


def s3_client_from_env() -> Any:
    """An S3 client for the adapter store, configured like the AWS tools (from the store Secret).

    AWS_ENDPOINT_URL (e.g. http://minio.storage:9000; default https://s3.amazonaws.com),
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION.
    """
    from minio import Minio

    endpoint = urlsplit(os.environ.get("AWS_ENDPOINT_URL", "https://s3.amazonaws.com"))
    return Minio(
        endpoint.netloc,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        region=os.environ.get("AWS_REGION"),
        secure=endpoint.scheme != "http",
    )
