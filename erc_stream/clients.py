"""Starting aiokafka clients with one clear error when the broker cannot be reached."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaError

from erc_stream.errors import BrokerError

__all__ = ["start_clients"]


async def start_clients(clients: Sequence[Any], bootstrap_servers: str, security_protocol: str = "PLAINTEXT") -> None:
    """Start aiokafka clients in order; if one cannot connect, stop them all and raise.

    Raises:
        BrokerError: saying where it tried and what to check.
    """
    try:
        for client in clients:
            await client.start()
    except KafkaError as exc:
        for client in clients:
            with contextlib.suppress(Exception):  # closing must not mask the original error
                await client.stop()
        raise BrokerError(
            f"cannot connect to Kafka at {bootstrap_servers} ({security_protocol}): {exc!r}; "
            "check that the broker runs, the bootstrap servers, TLS files and SASL credentials"
        ) from exc
