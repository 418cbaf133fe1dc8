"""A minimal Django Channels 1:1 room relay, written the way the Channels tutorial teaches.

The comparison peer of bench/relay_bench.py: ``/ws/chat/<room>/`` joins a group per room; every
text frame ``{"message": ...}`` is ``group_send``-ed to the room and each member's consumer writes
``{"message": ...}`` back (the sender included, as in the tutorial).  ``CHANNEL_LAYER`` picks
channels_redis's default ``RedisChannelLayer`` (``core``) or ``RedisPubSubChannelLayer``
(``pubsub``), both with their default options; ``REDIS_URL`` names the Redis both share.
"""
