"""Broker URLs written as Celery documents them reach ncsweep's own Redis clients (fast enqueue, queue scans)."""
from __future__ import annotations

import pytest

from nc_core.broker_client import redis_client, redis_url


@pytest.mark.parametrize("celery_spelling, redis_word", [("CERT_REQUIRED", "required"), ("CERT_OPTIONAL", "optional"),
                                                         ("CERT_NONE", "none"), ("required", "required")])
def test_kombus_ssl_cert_reqs_spellings_become_redis_pys(celery_spelling: str, redis_word: str) -> None:
    url = f"rediss://:s3cret@broker.example:6380/2?ssl_cert_reqs={celery_spelling}&ssl_ca_certs=%2Fetc%2Fca.pem"
    assert redis_url(url) == f"rediss://:s3cret@broker.example:6380/2?ssl_cert_reqs={redis_word}" \
                             "&ssl_ca_certs=%2Fetc%2Fca.pem"
    kwargs = redis_client(url).connection_pool.connection_kwargs  # parsed, not connected
    assert kwargs["ssl_cert_reqs"] == redis_word and kwargs["ssl_ca_certs"] == "/etc/ca.pem"


def test_a_cert_requirement_celery_accepts_passes_redis_pys_connection_check() -> None:
    import redis

    url = "rediss://:pw@127.0.0.1:1/0?ssl_cert_reqs=CERT_REQUIRED"
    with pytest.raises(redis.ConnectionError):  # port 1: refused; no longer "Invalid SSL Certificate Requirements"
        redis_client(url, socket_connect_timeout=0.5).ping()
    with pytest.raises(redis.RedisError, match="Invalid SSL Certificate Requirements Flag"):  # what it was
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


def test_other_urls_are_left_as_they_are() -> None:
    for url in ("redis://127.0.0.1:6379/0", "redis://:p%40ss@h:1/3?socket_timeout=5", "unix:///tmp/redis.sock?db=1"):
        assert redis_url(url) == url
