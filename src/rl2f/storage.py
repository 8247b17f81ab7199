"""Directories to and from S3 (AWS, MinIO or any S3-compatible server) with boto3.

Datasets, checkpoints and reports move as directory trees. Each object carries the SHA-256 of its
content in its metadata, so a download verifies what it got and an upload skips files the bucket
already holds unchanged (resuming an interrupted upload costs only the missing files).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rl2f.config import StorageConfig
from rl2f.errors import UserError

SHA_KEY = "sha256"  # object metadata key
MULTIPART_THRESHOLD = 16 * 1024 * 1024


@dataclass(frozen=True)
class TransferSummary:
    uploaded: int = 0
    downloaded: int = 0
    skipped: int = 0
    bytes: int = 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Storage:
    def __init__(self, cfg: StorageConfig, client: object | None = None) -> None:
        if not cfg.bucket:
            raise UserError("storage.bucket: set a bucket name to use S3 storage")
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig

        self.bucket = cfg.bucket
        self.prefix = cfg.prefix.strip("/")
        self.client = client or boto3.client(
            "s3",
            endpoint_url=cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3"),
            region_name=cfg.region,
            config=BotoConfig(retries={"max_attempts": 8, "mode": "adaptive"}),
        )
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
        )

    def key(self, *parts: str) -> str:
        return str(PurePosixPath(self.prefix, *parts))

    def _remote_sha(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        # Header names are case-insensitive; some servers return "Sha256".
        metadata = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
        return metadata.get(SHA_KEY)

    def upload_dir(self, local: str | os.PathLike[str], remote: str) -> TransferSummary:
        root = Path(local)
        if not root.is_dir():
            raise UserError(f"{root}: not a directory, nothing to upload")
        uploaded = skipped = size = 0
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = self.key(remote, path.relative_to(root).as_posix())
            sha = file_sha256(path)
            if self._remote_sha(key) == sha:
                skipped += 1
                continue
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs={"Metadata": {SHA_KEY: sha}},
                Config=self.transfer,
            )
            uploaded += 1
            size += path.stat().st_size
        return TransferSummary(uploaded=uploaded, skipped=skipped, bytes=size)

    def download_dir(self, remote: str, local: str | os.PathLike[str]) -> TransferSummary:
        root = Path(local)
        prefix = self.key(remote) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        downloaded = skipped = size = 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                target = root / obj["Key"][len(prefix) :]
                expected = self._remote_sha(obj["Key"])
                if target.exists() and expected and file_sha256(target) == expected:
                    skipped += 1
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.part")
                self.client.download_file(
                    self.bucket, obj["Key"], str(partial), Config=self.transfer
                )
                if expected and file_sha256(partial) != expected:
                    partial.unlink()
                    raise UserError(f"s3://{self.bucket}/{obj['Key']}: checksum mismatch")
                os.replace(partial, target)
                downloaded += 1
                size += obj["Size"]
        if downloaded == skipped == 0:
            raise UserError(f"s3://{self.bucket}/{prefix}: no objects under this prefix")
        return TransferSummary(downloaded=downloaded, skipped=skipped, bytes=size)
