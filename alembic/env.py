"""Alembic environment (from alembic's templates/generic/env.py). The URL comes from the
settings (CDCR_TARGET__URL) or from ``config.attributes['target_url']`` set by ``cdcr migrate``;
the version table lives in the service schema ``cdcr``."""

from logging.config import fileConfig

from sqlalchemy import create_engine, pool, text

from alembic import context

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

SERVICE_SCHEMA = "cdcr"
target_metadata = None


def _url() -> str:
    url = config.attributes.get("target_url")
    if url:
        return str(url)
    from cdc_reconciler.config import load_settings

    return load_settings().target.url_str()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        version_table_schema=SERVICE_SCHEMA,
    )
    with context.begin_transaction():
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {SERVICE_SCHEMA}")
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SERVICE_SCHEMA}"))
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=SERVICE_SCHEMA,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
