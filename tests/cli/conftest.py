"""S3 server, fake credentials and fault proxy fixtures (see tests/s3_testing.py)."""

from s3_testing import (  # noqa: F401
    aws_env, bucket, fault_proxy, moto_endpoint, raw_s3, s3_env, s3_server, s3_uri, seaweed_endpoint,
)
