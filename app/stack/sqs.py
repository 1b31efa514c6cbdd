"""An SQS-compatible endpoint on loopback: `moto`'s server, with Cadre's queues created in it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions

from app.queue import ensure_queues, sqs_client
from app.stack.process import ManagedProcess, wait_ready

# moto accepts any credentials; these only keep boto3 from searching the machine for real ones.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "cadre-local", "AWS_SECRET_ACCESS_KEY": "cadre-local"}


@dataclass(kw_only=True)
class EmbeddedSQS:
    """moto's server process. Its queues live in memory: they are recreated on every start."""

    port: int
    region: str
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name="sqs",
            argv=[sys.executable, "-m", "app.stack.sqs_server", "-H", "127.0.0.1", "-p",
                  str(self.port)],
            log_path=self.log_path,
        )

    def wait_ready(self, proc: ManagedProcess, queue_name: str, max_receive_count: int,
                   timeout: float = 30.0) -> str:
        """Wait for the endpoint, create the queue and its DLQ, return the queue URL."""
        client = sqs_client(
            region=self.region,
            endpoint_url=self.endpoint,
            access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        wait_ready(proc, client.list_queues, what="the SQS endpoint",
                   errors=(botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError),
                   timeout=timeout)
        return ensure_queues(client, queue_name, max_receive_count=max_receive_count).url
