"""Parsing of AFTERTALK_REDIS_URL (core/redis_client.py): single node, ``redis+cluster://``, ``redis+sentinel://``."""
from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from core.redis_client import (
    BlockingSentinelPool,
    ClusterClient,
    ClusterURL,
    SentinelClient,
    SentinelPubSub,
    SentinelURL,
    is_cluster_url,
    is_sentinel_url,
    make_redis,
    parse_cluster_url,
    parse_sentinel_url,
)
from gateway.settings import Settings, SettingsError


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


def test_sentinel_urls_are_told_from_the_others():
    assert is_sentinel_url("redis+sentinel://a:26379/mymaster")
    assert is_sentinel_url("REDISS+SENTINEL://a/mymaster")
    assert not is_sentinel_url("redis+cluster://a:1")
    assert not is_cluster_url("redis+sentinel://a:1/m")
    assert not is_sentinel_url("redis://a:1/0")


@pytest.mark.parametrize("url, expected", [
    ("redis+sentinel://10.0.0.1:26379/aftertalk", SentinelURL((("10.0.0.1", 26379),), "aftertalk")),
    ("redis+sentinel://a:26379,b:26380, c/aftertalk/0",
     SentinelURL((("a", 26379), ("b", 26380), ("c", 26379)), "aftertalk")),
    ("redis+sentinel://a/mymaster/3/", SentinelURL((("a", 26379),), "mymaster", db=3)),
    ("redis+sentinel://[::1]:26379,[fe80::1]/m", SentinelURL((("::1", 26379), ("fe80::1", 26379)), "m")),
    ("rediss+sentinel://app:s%40cret@a:26379,b:26379/aftertalk",
     SentinelURL((("a", 26379), ("b", 26379)), "aftertalk", username="app", password="s@cret", tls=True)),
    ("redis+sentinel://:pw@a/aftertalk?sentinel_password=s%26p&sentinel_username=watcher",
     SentinelURL((("a", 26379),), "aftertalk", password="pw", sentinel_username="watcher", sentinel_password="s&p")),
    ("redis+sentinel://a/my%2Dmaster", SentinelURL((("a", 26379),), "my-master")),
])
def test_parse_sentinel_url(url, expected):
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize("url, reason", [
    ("redis://a:26379/m", "not a Sentinel URL"),
    ("redis+sentinel:///aftertalk", "at least one Sentinel"),
    ("redis+sentinel://a:26379", "master name"),
    ("redis+sentinel://a:26379/", "master name"),
    ("redis+sentinel://a:26379//0", "master name"),
    ("redis+sentinel://a:26379/aftertalk/x", "database number"),
    ("redis+sentinel://a:26379/aftertalk/-1", "database number"),
    ("redis+sentinel://a:26379/aftertalk/0/extra", "path is /<master-name>[/db]"),
    ("redis+sentinel://a:26379/my%20master", "bad master name"),
    ("redis+sentinel://a:notaport/aftertalk", "bad port"),
    ("redis+sentinel://a:0/aftertalk", "bad node"),
    ("redis+sentinel://:26379/aftertalk", "bad node"),
    ("redis+sentinel://a/aftertalk?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
])
def test_malformed_sentinel_urls_are_refused_with_the_reason(url, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_sentinel_url(url)


def test_a_bad_sentinel_url_stops_start_up_naming_the_variable_with_passwords_masked():
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"AFTERTALK_REDIS_URL": "redis+sentinel://app:hunter2@s1:26379,s2:26379"
                                                  "?sentinel_password=swordfish"})
    text = str(info.value)
    assert "AFTERTALK_REDIS_URL='redis+sentinel://app:***@s1:26379,s2:26379?sentinel_password=***' is not allowed" \
        in text
    assert "master name" in text and "redis+sentinel://host:port[,host:port...]/<master-name>[/db]" in text
    assert "hunter2" not in text and "swordfish" not in text
    for good in ("redis+sentinel://s1:26379,s2:26379,s3:26379/aftertalk", "rediss+sentinel://:pw@s1/aftertalk/0"):
        assert Settings.from_env({"AFTERTALK_REDIS_URL": good}).redis_url == good


async def test_the_factory_builds_a_waiting_sentinel_client_without_connecting():
    client = make_redis("redis+sentinel://127.0.0.1:1,127.0.0.1:2/aftertalk/2", decode=True)
    assert isinstance(client, SentinelClient)
    pool = client.connection_pool
    assert isinstance(pool, BlockingSentinelPool) and isinstance(pool, aioredis.BlockingConnectionPool)
    assert (pool.service_name, pool.is_master, pool.connection_kwargs["db"]) == ("aftertalk", True, 2)
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in client.sentinel_manager.sentinels] == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    pubsub = client.pubsub()
    assert isinstance(pubsub, SentinelPubSub) and pubsub.connection_pool is pool
    assert await pubsub.still_primary()          # not connected: nothing to say against it
    await pubsub.aclose()
    await client.aclose()
