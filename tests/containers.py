"""The services from docker-compose.yml through testcontainers, for machines with a Docker engine
(the native stack, scripts/stack, serves machines without one). Debezium runs inside the Connect
container there, so it reaches the source database by its service name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import REPO, Services

SERVICES = ["kafka", "connect", "source-db", "target-db", "redis"]


@contextmanager
def compose_services() -> Iterator[Services]:
    from testcontainers.compose import DockerCompose

    with DockerCompose(
        REPO, compose_file_name="docker-compose.yml", services=SERVICES, wait=True
    ) as compose:
        compose.wait_for("http://127.0.0.1:18083/connector-plugins")
        yield Services(
            kafka_bootstrap="127.0.0.1:19092",
            connect_url="http://127.0.0.1:18083",
            source_url="postgresql+psycopg2://postgres:postgres@127.0.0.1:15432/source",
            target_url="postgresql+psycopg2://postgres:postgres@127.0.0.1:15433/target",
            redis_url="redis://127.0.0.1:16379/0",
            connect_source_host="source-db",
            connect_source_port=5432,
        )
