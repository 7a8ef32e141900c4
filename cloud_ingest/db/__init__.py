"""The cloud's SQL state: schema, engines and migrations."""

from cloud_ingest.db.engine import create_db_engine, migrate, open_database

__all__ = ["create_db_engine", "migrate", "open_database"]
