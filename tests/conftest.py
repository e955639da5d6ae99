"""Fixtures shared across test folders: the S3 protocol server (moto, on 127.0.0.1)."""

pytest_plugins = ["tests.support.s3"]
