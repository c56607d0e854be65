"""Airflow connection → SQLAlchemy engine, through the providers' own hooks."""

from __future__ import annotations

import os

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from airflow_migrate_provider.connections import uri_problem
from airflow_migrate_provider.core.dialects import Dialect, dialect_for, own_connection_url
from airflow_migrate_provider.errors import ConnectionUnavailable
from airflow_migrate_provider.local_run import connection_env_name


class MigrationHook(BaseHook):
    """Opens the databases a plan names by Airflow connection id.

    It does not parse URIs itself: it asks the connection for its provider hook (PostgresHook,
    SqliteHook, ...) and takes that hook's SQLAlchemy engine, so connection extras, SSL settings and
    secrets backends work exactly as they do for every other Airflow task. The exception is a database whose
    provider needs system libraries (MySQL/MariaDB: mysqlclient): its adapter builds the URL from the
    connection's fields with a pure-Python driver (``Dialect.connection_url``).
    """

    hook_name = "Database migration"

    def __init__(self, conn_id: str, **kwargs: object):
        super().__init__(**kwargs)
        self.conn_id = conn_id

    def get_engine(self) -> Engine:
        self._check_environment_uri()
        try:
            connection = self.get_connection(self.conn_id)
        except AirflowNotFoundException:
            raise ConnectionUnavailable(
                f"Airflow connection '{self.conn_id}' is not defined: create it (Admin → Connections, "
                f"`airflow connections add`, or an {connection_env_name(self.conn_id)} variable)",
                transient=False,
            ) from None
        url = own_connection_url(connection.conn_type, connection.host, connection.port, connection.login,
                                 connection.password, connection.schema, connection.extra_dejson)
        if url is not None:
            return create_engine(url, pool_pre_ping=True)
        try:
            db_hook = connection.get_hook()
        except Exception as exc:  # the provider for this conn_type is missing or rejected the connection
            raise ConnectionUnavailable(
                f"Airflow connection '{self.conn_id}' (type '{connection.conn_type}') has no usable database "
                f"hook: {exc}. Install the provider for that database type.",
                transient=False,
            ) from exc
        if not hasattr(db_hook, "get_sqlalchemy_engine"):
            raise ConnectionUnavailable(
                f"Airflow connection '{self.conn_id}' is of type '{connection.conn_type}', which is not a "
                f"SQL database connection",
                transient=False,
            )
        return db_hook.get_sqlalchemy_engine()

    def _check_environment_uri(self) -> None:
        """A malformed URI in ``AIRFLOW_CONN_<ID>`` is reported as such (Airflow would call the connection "not
        defined", or read ``user:pass@host`` as a connection of type ``user``); the password is never quoted."""
        variable = connection_env_name(self.conn_id)
        uri = os.environ.get(variable)
        if uri is None or uri.lstrip().startswith("{"):  # unset, or Airflow's JSON form
            return
        problem = uri_problem(uri)
        if problem:
            raise ConnectionUnavailable(f"Airflow connection '{self.conn_id}': the URI in {variable} {problem}",
                                        transient=False)

    def get_engine_and_dialect(self, field: str = "connections.target") -> tuple[Engine, Dialect]:
        """The engine and its dialect adapter; an unsupported database names ``field`` and the connection."""
        engine = self.get_engine()
        return engine, dialect_for(engine, field=field, conn_id=self.conn_id)
