"""Prometheus metrics of one gateway process (each process exposes its own /metrics)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

CONNECTIONS = Gauge("aftertalk_connections", "Open WebSocket connections on this process", ["role"], registry=REGISTRY)
MATCHES = Counter("aftertalk_matches_total", "Conversations created by calls from this process", registry=REGISTRY)
MATCH_LATENCY = Histogram("aftertalk_match_latency_seconds", "Talk-now to match, for matches made here",
                          buckets=(0.05, 0.25, 1, 5, 15, 30, 60, 120, 300, 900), registry=REGISTRY)
OFFER_OUTCOMES = Counter("aftertalk_offer_outcomes_total", "Offer outcomes (whole service, from the store)",
                         ["outcome"], registry=REGISTRY)
QUEUE_LENGTH = Gauge("aftertalk_queue_length", "Patients waiting (whole service)", registry=REGISTRY)
MESSAGES = Counter("aftertalk_messages_total", "Messages acknowledged by this process", registry=REGISTRY)
DELIVERED = Counter("aftertalk_frames_delivered_total", "Live message frames written to sockets", registry=REGISTRY)
ERRORS = Counter("aftertalk_error_frames_total", "Error frames sent", ["code"], registry=REGISTRY)
GAP_FILLS = Counter("aftertalk_gap_fills_total", "Times a connection was caught up from the log", registry=REGISTRY)
CATCHUPS_WAITING = Gauge("aftertalk_catchups_waiting", "Catch-ups (log reads, user re-syncs) waiting for one of the "
                         "AFTERTALK_CATCHUP_CONCURRENCY slots", registry=REGISTRY)
SLOW_CLOSES = Counter("aftertalk_slow_consumer_closes_total", "Connections cut for not reading", registry=REGISTRY)
PUBSUB_RECONNECTS = Counter("aftertalk_pubsub_reconnects_total", "Pub/sub link re-established", registry=REGISTRY)
FLAGS = Counter("aftertalk_flags_total", "Moderation flags raised here", ["category"], registry=REGISTRY)
SCREEN_WAITING = Gauge("aftertalk_screening_backlog", "Messages queued for the screening model and not yet "
                       "screened (whole service)", registry=REGISTRY)
SCREEN_OLDEST = Gauge("aftertalk_screening_oldest_age_seconds", "Age of the oldest message waiting for screening "
                      "(whole service; 0 when none waits)", registry=REGISTRY)
SCREEN_PENDING = Gauge("aftertalk_screening_in_progress", "Queued messages a worker has taken and not finished",
                       registry=REGISTRY)

_OUTCOME_FIELDS = {"offers_made": "made", "offers_accepted": "accepted", "offers_declined": "declined",
                   "offers_timeout": "timeout", "offers_withdrawn": "withdrawn", "offers_cancelled": "cancelled"}


def update_store_gauges(stats: dict[str, str], queue_length: int) -> None:
    """Copy service-wide counters kept in Redis into this process's gauges."""
    QUEUE_LENGTH.set(queue_length)
    for field, outcome in _OUTCOME_FIELDS.items():
        value = float(stats.get(field, 0))
        current = OFFER_OUTCOMES.labels(outcome)._value.get()
        if value > current:
            OFFER_OUTCOMES.labels(outcome).inc(value - current)


def update_screening_gauges(waiting: int, oldest_age_s: float, pending: int) -> None:
    SCREEN_WAITING.set(waiting)
    SCREEN_OLDEST.set(oldest_age_s)
    SCREEN_PENDING.set(pending)
