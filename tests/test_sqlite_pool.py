"""On SQLite each process reuses its connections instead of opening one per request."""
import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection

pytestmark = pytest.mark.skipif(connection.vendor != "sqlite", reason="the pooled backend is SQLite's")


def raw() -> object:
    connection.ensure_connection()
    return connection.connection


def test_a_closed_connection_is_reused_by_the_next_request(transactional_db):
    first = raw()
    connection.close()  # what Django does at the end of every request
    assert raw() is first


def test_an_open_transaction_is_rolled_back_before_reuse(transactional_db):
    before = ContentType.objects.count()
    conn = raw()
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("INSERT INTO django_content_type (app_label, model) VALUES ('left', 'behind')")
    assert conn.in_transaction
    connection.close()
    assert raw() is conn and not conn.in_transaction
    assert ContentType.objects.count() == before


def test_constraint_checking_is_back_on_for_the_next_user(transactional_db):
    connection.disable_constraint_checking()
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA foreign_keys")
        assert cursor.fetchone()[0] == 1


def test_remembered_placeholder_conversions_give_the_same_statements(db):
    from relay_project.pooled_sqlite3.base import _CACHED_QUERY_MAX

    n = _CACHED_QUERY_MAX // 4
    long_list = ", ".join(["%s"] * n)  # too long to be remembered
    with connection.cursor() as cursor:
        for _ in range(2):  # converted, then remembered
            cursor.execute("SELECT %s, '100%%', %s", [1, "%s"])
            assert cursor.fetchone() == (1, "100%", "%s")
        cursor.execute("SELECT %(a)s, '100%%'", {"a": 2})  # pyformat: Django's own conversion
        assert cursor.fetchone() == (2, "100%")
        cursor.execute(f"SELECT 1 WHERE 5 IN ({long_list})", list(range(n)))
        assert cursor.fetchone() == (1,)
