"""The composition root's database and Redis part, and the soft-delete key that is gone."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from cdc_reconciler import wiring
from cdc_reconciler.config import DatabaseSettings, RedisSettings, Settings, load_settings
from cdc_reconciler.errors import ConfigError
from cdc_reconciler.stream.metrics import Metrics
from cdc_reconciler.stream.outcomes import BatchOutcome


@pytest.mark.parametrize("which", ["source", "target"])
def test_a_missing_url_is_one_config_error(which: str) -> None:
    settings = Settings.model_construct(source=DatabaseSettings(), target=DatabaseSettings())
    build = wiring.source_engine if which == "source" else wiring.target_engine
    with pytest.raises(ConfigError, match=rf"CDCR_{which.upper()}__URL is not set: no {which} URL"):
        build(settings)
    assert wiring.apply_source_engine(settings) is None  # the apply engine's source is optional


def test_engines_carry_the_connection_settings() -> None:
    db = DatabaseSettings(url=SecretStr("postgresql+psycopg2://u:p@h:5/d"), statement_timeout_s=3)
    settings = Settings.model_construct(target=db, source=db)
    engine = wiring.apply_target_engine(settings)
    plain = wiring.target_engine(settings)
    try:
        args = wiring.connect_args(db, statement_timeout=True)
        assert args["options"] == "-c statement_timeout=3000"
        assert "options" not in wiring.connect_args(db, statement_timeout=False)
        assert engine.pool.size() == 2  # type: ignore[attr-defined]
        assert isinstance(plain, sa.Engine)
    finally:
        engine.dispose()
        plain.dispose()
    sqlite = wiring.engine_for(DatabaseSettings(url=SecretStr("sqlite://")), "target")
    with sqlite.connect() as c:  # libpq settings are not passed to other drivers
        assert c.execute(sa.text("select 1")).scalar() == 1
    sqlite.dispose()


def test_soft_delete_column_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "cdcr.yaml"
    cfg.write_text("tables:\n  public.t:\n    soft_delete_column: deleted\n")
    with pytest.raises(ConfigError, match=r"soft_delete_column is not supported.*tombstone"):
        load_settings(cfg)
    cfg.write_text("tables:\n  public.t:\n    key_columns: [id]\n")
    assert load_settings(cfg).tables["public.t"].key_columns == ["id"]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redis_down_shows_in_the_metric_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """A real Redis client on a port where nothing listens: lookups answer "not seen", records
    are dropped, one error line is logged, and the batch metric says Redis is down."""
    url = f"redis://127.0.0.1:{_dead_port()}/0"
    settings = Settings.model_construct(
        redis=RedisSettings(url=SecretStr(url)),
        target=DatabaseSettings(url=SecretStr("postgresql://h:5432/d")),
    )
    ids = wiring.processed_ids(settings)
    metrics = Metrics()
    try:
        with caplog.at_level(logging.ERROR, logger="cdc_reconciler.connectors.redis_ids"):
            assert ids.seen([(b"a" * 16, 1), (b"b" * 16, 2)]) == [False, False]
            assert ids.record([(b"a" * 16, 1)]) is False
        metrics.observe_batch(BatchOutcome(), 0.01, redis_up=ids.available)
    finally:
        ids.close()
    assert ids.available is False and ids.failures == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # logged once per outage, not per batch
    assert errors[0].startswith("Redis unavailable (lookup: ")
    assert "continuing without the dedup fast path" in errors[0]
    assert metrics.registry.get_sample_value("cdcr_redis_up") == 0.0
