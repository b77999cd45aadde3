"""Redis clients from broker URLs written as Celery (kombu) reads them, e.g. rediss://…?ssl_cert_reqs=CERT_REQUIRED."""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: kombu's spellings of ssl_cert_reqs that redis-py refuses when it connects ("Invalid SSL Certificate
#: Requirements Flag"), and redis-py's own for them.
_CERT_REQS = {"CERT_REQUIRED": "required", "CERT_OPTIONAL": "optional", "CERT_NONE": "none"}


def redis_url(url: str) -> str:
    """``url`` as redis-py reads it: an ``ssl_cert_reqs`` in kombu's CERT_* spelling (the one Celery's docs show)
    becomes redis-py's word for the same requirement; anything else is left as it is."""
    parts = urlsplit(url)
    if "ssl_cert_reqs" not in parts.query:
        return url
    query = [(k, _CERT_REQS.get(v, v) if k == "ssl_cert_reqs" else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def redis_client(url: str, **kwargs: Any) -> Any:
    """``redis.Redis.from_url`` of the broker URL (:func:`redis_url`), with ``kwargs`` (timeouts)."""
    import redis

    return redis.Redis.from_url(redis_url(url), **kwargs)


def queue_keys(queue: str) -> tuple[str, ...]:
    """The Redis lists of a Celery queue: the queue's own and kombu's priority sub-queues (``<queue>\\x06\\x16<p>``,
    priorities 1-9; priority 0 is the queue's own list)."""
    return (queue, *(f"{queue}\x06\x16{p}" for p in range(1, 10)))


def message_task_args(message: Any) -> tuple[Any, Any] | None:
    """(task name, positional args) of a Celery message (its raw JSON bytes or the parsed dict; a base64 body
    decoded), or None when it is not one."""
    import base64
    import json

    try:
        payload = message if isinstance(message, dict) else json.loads(message)
        body = payload["body"]
        if payload.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return payload.get("headers", {}).get("task"), json.loads(body)[0]
    except Exception:  # noqa: BLE001 - not a Celery message
        return None
