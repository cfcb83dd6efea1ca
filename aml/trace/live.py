"""Live trace: the keys of a running Redis, read-only, in bounded batches.

One read-only Lua script (``#!lua flags=no-writes``) per batch runs ``SCAN`` (``COUNT`` 1000) itself and
returns, per key it found, the key and its type, ``OBJECT ENCODING``, ``MEMORY USAGE``,
``PTTL``, ``OBJECT IDLETIME`` (``OBJECT FREQ`` under an LFU eviction policy) and, for strings, the first
16 bytes to sniff. The script stops after about 8 ms (it checks ``TIME``) and returns the keys of its
``SCAN`` batch it did not reach, which the next call takes first, so the server is never blocked for long;
one round trip per batch, and no key is sent to the server (only received). Sizes are exact
(``SAMPLES 0``) but for aggregates in their big encodings (hashtable, skiplist, quicklist, stream), which
``MEMORY USAGE`` samples (1000 elements) so that one key cannot block the server; those are counted as
``sizes_estimated``.

Nothing is written. Reading a value's first bytes counts as an access for the server's LRU clock; on
Redis 7.2 and later the connection is put in ``CLIENT NO-TOUCH`` mode first so idle times stay true;
on older servers the report says ``sniff_touches_keys`` (``sniff=False`` avoids it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.exceptions

from aml.store.storeid import keyspace_id, redact
from aml.trace.patterns import decode_key
from aml.trace.sniff import ValueEncoding, sniff
from aml.trace.stats import KeyspaceStats

SCAN_COUNT = 1000
"""``SCAN``'s ``COUNT`` hint per call."""

_BIG_ENCODINGS = frozenset((b"hashtable", b"skiplist", b"quicklist", b"stream", b"linkedlist"))

SCRIPT_BUDGET_MS = 8
"""How long one script call may run before it returns what it has, milliseconds: it checks every 32 keys,
so a call stays within about 10 ms, the issue's bound (measured: 8.5-10.9 ms longest on 1M keys)."""

AGGREGATE_SAMPLES = 1000
"""``MEMORY USAGE ... SAMPLES`` for aggregates in big encodings."""

_SCRIPT = """#!lua flags=no-writes,allow-stale
local idle_cmd, sniff, budget, samples = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3]), ARGV[4]
local cursor, match, count, limit = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
local kinds = {embstr='string', raw='string', int='string', quicklist='list', linkedlist='list',
               intset='set', skiplist='zset', stream='stream'}
local big = {hashtable=true, skiplist=true, quicklist=true, stream=true, linkedlist=true}
local t0 = redis.call('TIME')
local start = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
local out = {}
local n = 0
local done = 0
local todo = KEYS
local scanned = false
local i = 1
while done < limit do
  if i > #todo then
    if scanned or cursor == 'done' then break end
    local r = redis.call('SCAN', cursor, 'MATCH', match, 'COUNT', count)
    cursor = r[1]
    if cursor == '0' then cursor = 'done' end
    todo = r[2]
    i = 1
    scanned = true
  else
    local key = todo[i]
    i = i + 1
    done = done + 1
    local enc = redis.call('OBJECT', 'ENCODING', key)
    out[n + 1] = key
    if not enc then
      out[n + 2] = 'none'; out[n + 3] = ''; out[n + 4] = 0; out[n + 5] = -2; out[n + 6] = 0; out[n + 7] = ''
    else
      local kind = kinds[enc] or redis.call('TYPE', key)['ok']
      local mem
      if big[enc] then mem = redis.call('MEMORY', 'USAGE', key, 'SAMPLES', samples)
      else mem = redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0') end
      out[n + 2] = kind
      out[n + 3] = enc
      out[n + 4] = mem or 0
      out[n + 5] = redis.call('PTTL', key)
      out[n + 6] = redis.call('OBJECT', idle_cmd, key)
      if sniff and kind == 'string' then out[n + 7] = redis.call('GETRANGE', key, 0, 15) else out[n + 7] = '' end
    end
    n = n + 7
    if done % 32 == 0 then
      local t = redis.call('TIME')
      if (tonumber(t[1]) * 1000000 + tonumber(t[2])) - start > budget * 1000 then break end
    end
  end
end
local left = {}
for j = i, #todo do left[#left + 1] = todo[j] end
return {cursor, out, left}
"""


class TraceInterrupted(RuntimeError):
    """The Redis stopped answering mid-trace; :attr:`partial` holds what was read before."""

    def __init__(self, message: str, partial: LiveInfo) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass(slots=True)
class LiveInfo:
    """What the server says about itself, and how the trace went (seconds, counts)."""

    server: dict[str, Any] = field(default_factory=dict)
    scanned: int = 0
    vanished: int = 0
    script_calls: int = 0
    partial_calls: int = 0
    touches_keys: bool = False
    idle_source: str = "idletime"
    error: str | None = None


def _server_info(client: redis.Redis, db: int) -> dict[str, Any]:
    info = client.info("server") | client.info("memory") | client.info("keyspace")
    space = info.get(f"db{db}") or {}
    policy = str(info.get("maxmemory_policy", ""))
    return {
        "redis_version": str(info.get("redis_version", "")),
        "db": db,
        "keys": int(space.get("keys", 0)),
        "expires": int(space.get("expires", 0)),
        "used_memory": int(info.get("used_memory", 0)),
        "used_memory_dataset": int(info.get("used_memory_dataset", 0)),
        "maxmemory": int(info.get("maxmemory", 0)),
        "maxmemory_policy": policy,
    }


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def trace_redis(client: redis.Redis, stats: KeyspaceStats, *, db: int = 0, match: str | None = None,
                sample: int | None = None, sniff_values: bool | None = True,
                progress: Callable[[int, int], None] | None = None) -> LiveInfo:
    """Feed the keys of the client's database into ``stats``, read-only.

    Args:
        client: a redis-py client on the database to trace (``decode_responses=False``).
        stats: the aggregation to feed.
        db: the database number the client uses (for ``INFO keyspace``).
        match: a ``SCAN MATCH`` glob, or ``None`` for every key.
        sample: stop after this many keys (``None``: all).
        sniff_values: read the first 16 bytes of string values to tell their encoding; ``None``: only on
            servers with ``CLIENT NO-TOUCH`` (Redis 7.2+), where the read does not count as an access.
        progress: called after each batch with the keys traced so far and the keys of the database
            (``INFO keyspace``; 0 if unknown).

    Returns:
        :class:`LiveInfo` (``server``: version, key counts, memory, eviction policy).

    Raises:
        redis.exceptions.ConnectionError / AuthenticationError / ResponseError: before any key was
            read (the server does not answer, a wrong password, a db that does not exist).
        TraceInterrupted: the server stopped answering after the trace began (partial result inside).
    """
    live = LiveInfo(server=_server_info(client, db))
    policy = live.server["maxmemory_policy"]
    lfu = "lfu" in policy
    live.idle_source = "freq" if lfu else "idletime"
    no_touch = _version(live.server["redis_version"]) >= (7, 2)
    if sniff_values is None:
        sniff_values = no_touch
    if sniff_values:
        if no_touch:
            client.execute_command("CLIENT", "NO-TOUCH", "ON")
        else:
            live.touches_keys = True
    sha = client.script_load(_SCRIPT)
    args = ("FREQ" if lfu else "IDLETIME", "1" if sniff_values else "0", SCRIPT_BUDGET_MS, AGGREGATE_SAMPLES)
    cursor = "0"
    left: list[bytes] = []
    try:
        while cursor != "done" or left:
            limit = SCAN_COUNT * 4 if sample is None else sample - live.scanned
            if limit <= 0:
                break
            next_cursor, flat, left = client.evalsha(sha, len(left), *left, *args, cursor, match or "*",
                                                     SCAN_COUNT, limit)
            cursor = next_cursor.decode()
            live.script_calls += 1
            if left:
                live.partial_calls += 1
            _feed(stats, flat, lfu, sniff_values, live)
            if progress is not None:
                progress(live.scanned, live.server["keys"])
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        live.error = f"the Redis stopped answering after {live.scanned} keys: {exc}"
        raise TraceInterrupted(live.error, live) from exc
    return live


def _feed(stats: KeyspaceStats, flat: list[Any], lfu: bool, sniffed: bool, live: LiveInfo) -> None:
    """Count the keys of one script reply (seven values per key: the key, then what the script read)."""
    add = stats.add
    unknown = ValueEncoding.UNKNOWN
    for i in range(0, len(flat), 7):
        key, kind, enc, mem, pttl, idle, head = flat[i: i + 7]
        if kind == b"none":  # deleted or expired between SCAN and now
            live.vanished += 1
            continue
        type_ = kind.decode()
        add(decode_key(key), type_=type_, nbytes=int(mem), encoding=enc.decode(),
            ttl_s=None if pttl < 0 else pttl / 1000.0,
            value=sniff(head) if sniffed and type_ == "string" else unknown,
            idle_s=None if lfu else float(idle), freq=int(idle) if lfu else None,
            size_estimated=enc in _BIG_ENCODINGS)
        live.scanned += 1


def connect(url: str, timeout_s: float = 5.0) -> tuple[redis.Redis, int]:
    """A client for a ``redis://`` / ``rediss://`` / ``unix://`` URL, and its database number.

    Raises:
        ValueError: not a Redis URL.
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{redact(url)} is not a Redis URL (redis://host:port/db)")
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                  decode_responses=False)
    return client, int(client.connection_pool.connection_kwargs.get("db", 0) or 0)


def tracing_client(source: str | redis.Redis) -> tuple[redis.Redis, int, str]:
    """A client of aml's own for a URL or for an application's client (same server and database, its own
    connections, so ``CLIENT NO-TOUCH`` and bytes replies never leak into the application's), its database
    number, and the keyspace's name (URL without password). The caller closes the client.

    Raises:
        ValueError: a string that is not a Redis URL.
    """
    if isinstance(source, str):
        client, db = connect(source)
        return client, db, keyspace_id(source)
    pool = source.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["decode_responses"] = False
    client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
    db = int(kwargs.get("db", 0) or 0)
    where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    scheme = "unix" if kwargs.get("path") else "redis"
    return client, db, f"{scheme}://{where}/{db}"
