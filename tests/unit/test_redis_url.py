"""Parsing of AFTERTALK_REDIS_URL: single node vs. ``redis+cluster://`` (core/redis_client.py)."""
from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from core.redis_client import ClusterClient, ClusterURL, is_cluster_url, make_redis, parse_cluster_url


def test_cluster_urls_are_told_from_single_node_urls():
    assert is_cluster_url("redis+cluster://a:1")
    assert is_cluster_url("REDISS+CLUSTER://a:1")
    assert not is_cluster_url("redis://a:1/0")
    assert not is_cluster_url("rediss://a:1/0")
    assert not is_cluster_url("unix:///run/redis.sock")


@pytest.mark.parametrize("url, expected", [
    ("redis+cluster://10.0.0.1:7000", ClusterURL((("10.0.0.1", 7000),))),
    ("redis+cluster://a:7000,b:7001, c:7002/", ClusterURL((("a", 7000), ("b", 7001), ("c", 7002)))),
    ("redis+cluster://host", ClusterURL((("host", 6379),))),
    ("redis+cluster://[::1]:7000,[fe80::1]:7001/0", ClusterURL((("::1", 7000), ("fe80::1", 7001)))),
    ("rediss+cluster://app:s%40cret@a:7000,b:7000",
     ClusterURL((("a", 7000), ("b", 7000)), username="app", password="s@cret", tls=True)),
    ("redis+cluster://:only-password@a:7000", ClusterURL((("a", 7000),), password="only-password")),
    ("redis+cluster://a:7000?ignored=1", ClusterURL((("a", 7000),))),
])
def test_parse_cluster_url(url, expected):
    assert parse_cluster_url(url) == expected


@pytest.mark.parametrize("url", [
    "redis://a:7000",                      # not a cluster URL
    "redis+cluster://",                    # no node
    "redis+cluster://a:7000/1",            # a cluster has only database 0
    "redis+cluster://a:notaport",
    "redis+cluster://a:0",
    "redis+cluster://a:70000",
    "redis+cluster://:7000",
])
def test_malformed_cluster_urls_are_refused(url):
    with pytest.raises(ValueError):
        parse_cluster_url(url)


async def test_the_factory_builds_a_waiting_pool_or_a_cluster_client_without_connecting():
    single = make_redis("redis://127.0.0.1:1/0", decode=True)
    assert isinstance(single, aioredis.Redis)
    assert isinstance(single.connection_pool, aioredis.BlockingConnectionPool)
    cluster = make_redis("redis+cluster://127.0.0.1:1,127.0.0.1:2", decode=False)
    assert isinstance(cluster, ClusterClient)
    # before discovery the pub/sub source rotates over the URL's nodes
    assert cluster.pubsub_candidates() == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    hosts = set()
    for _ in range(4):
        ps = cluster.pubsub()
        kw = ps.connection_pool.connection_kwargs
        hosts.add((kw["host"], kw["port"]))
    assert hosts == {("127.0.0.1", 1), ("127.0.0.1", 2)}
    await single.aclose()
    await cluster.aclose()
