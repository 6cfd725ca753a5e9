"""Transitional: ``stream/lag_cli.py`` (being moved this session) still imports this module. Its
move builds the admin with ``cdc_reconciler.wiring.kafka_admin``; then this file is deleted."""

from __future__ import annotations

from typing import Any

from cdc_reconciler.config import KafkaSettings
from cdc_reconciler.connectors.kafka.admin import KafkaAdmin
from cdc_reconciler.connectors.kafka.config import admin_config
from cdc_reconciler.connectors.kafka.errors import KafkaEdgeError as KafkaAdminError

__all__ = ["KafkaAdmin", "KafkaAdminError", "client_config"]


def client_config(
    bootstrap_servers: str, *, sasl_username: str | None = None, sasl_password: str | None = None
) -> dict[str, Any]:
    from pydantic import SecretStr

    return admin_config(
        KafkaSettings(
            bootstrap_servers=bootstrap_servers,
            sasl_username=sasl_username,
            sasl_password=SecretStr(sasl_password) if sasl_password is not None else None,
        )
    )
