"""The `services` marker convention, and this machine's real PostgreSQL, Redis and RabbitMQ."""

import socket
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = """
import pytest

@pytest.mark.services("postgres")
def test_needs_postgres():
    pass
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def inner(pytester, monkeypatch):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    services(*names): real servers\n")
    pytester.makepyfile(INNER)
    monkeypatch.setenv("AGENTLOOP_PG_PORT", str(_closed_port()))
    return pytester


def test_absent_service_is_skipped_with_a_reason_on_a_laptop(inner, monkeypatch):
    monkeypatch.delenv("AGENTLOOP_REQUIRE_SERVICES", raising=False)
    result = inner.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*postgres is not reachable on 127.0.0.1:*"])


def test_absent_service_is_a_failure_when_ci_requires_services(inner, monkeypatch):
    monkeypatch.setenv("AGENTLOOP_REQUIRE_SERVICES", "1")
    result = inner.runpytest_subprocess()
    result.assert_outcomes(errors=1)  # fails in setup: the test body never runs
    result.stdout.fnmatch_lines(["*postgres is not reachable*AGENTLOOP_REQUIRE_SERVICES=1*"])


@pytest.mark.services("postgres")
def test_postgres_answers_a_query():
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres") as conn:
        with conn.cursor() as cur:
            cur.execute("select 40 + 2")
            assert cur.fetchone()[0] == 42


@pytest.mark.services("redis")
def test_redis_round_trips_a_value():
    import redis

    r = redis.Redis(host="127.0.0.1", port=6379)
    r.set("agentloop:test", "ok", ex=30)
    assert r.get("agentloop:test") == b"ok"


@pytest.mark.services("rabbitmq")
def test_rabbitmq_round_trips_a_message():
    import pika

    conn = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest"))
    )
    try:
        ch = conn.channel()
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        ch.basic_publish(exchange="", routing_key=q, body=b"ping")
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"ping"
    finally:
        conn.close()
