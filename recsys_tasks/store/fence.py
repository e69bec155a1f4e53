"""The fenced write: one script call per few hundred rows; an older or stalled load never replaces newer documents.

Every hash slot has a fence key (``<lock_key>:FENCE:{tag}``, one key on a single Redis) holding the
logical date and the *generation* (the server's clock when the load took its lock) of the last load
that claimed it. Before its first document a load claims every fence (:func:`claim_payloads`): a
fence holding a newer generation (a load that took the lock after this one: this one stalled past
it) or, unless forced, a newer logical date refuses the load. Each call of document writes then
checks the fence of its first row's slot only: a load that took the lock later claimed every fence
before writing anything, so a call that still finds a fence unclaimed by it runs before all of its
writes, which replace the stale call's. The generation closes the same-date window the lock check
between chunks leaves: a writer of the same logical date that stalled past its lock is refused too.
A fence that is missing, older than ours (lost) or on another node (its slot is being migrated)
makes the call compare each document's own logical date instead.

The expiry is one instant per load (``generation + ttl_s``), so ``PEXPIRETIME`` tells the read-back
whether a key holds this load's write, without reading the document.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..config import StoreConfig
from .resilience import is_cluster

# Dates are compared as instants (UTC seconds); ours and the fences' are numbers written by us. The
# stored document's own date is parsed only where the slot's fence is on another node (a slot being
# migrated). Accepted: YYYY-MM-DD, then optionally [T ]HH:MM[:SS[.ffffff]] and Z or +HH:MM / -HH:MM
# (what Python's datetime.isoformat writes); a date this cannot parse never blocks a write.
EPOCH_LUA = """
local function epoch(s)
  local y, mo, d, rest = string.match(s, '^(%d%d%d%d)-(%d%d)-(%d%d)(.*)$')
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  local secs, off = 0, 0
  if rest ~= '' then
    local h, mi, tail = string.match(rest, '^[T ](%d%d):(%d%d)(.*)$')
    if not h then return nil end
    secs = tonumber(h) * 3600 + tonumber(mi) * 60
    local sec, after = string.match(tail, '^:(%d%d%.?%d*)(.*)$')
    if sec then secs = secs + tonumber(sec); tail = after end
    if tail == 'Z' then tail = '' end
    if tail ~= '' then
      local sign, oh, om = string.match(tail, '^([%+%-])(%d%d):?(%d%d)$')
      if not sign then return nil end
      off = tonumber(oh) * 3600 + tonumber(om) * 60
      if sign == '-' then off = -off end
    end
  end
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return (era * 146097 + doe - 719468) * 86400 + secs - off
end
"""
# KEYS[1]: routes the call (its first fence or document key); every other key is in ARGV (a cluster node
# checks each access). ARGV: date (UTC seconds, '-' when undated), generation, force, expire-at (ms), may
# create a missing fence ('0' after ASKING: the slot is being imported and its fence may still be on the
# other node), groups G, then G pairs (fence key, rows it covers), then the document keys, then the
# documents. A claim is G fences covering no rows. Replies -1 when refused, else the documents written.
# Every check comes before the first write, so a refused call writes nothing; a write that fails midway (a
# key of a slot being migrated) leaves whole documents of this load, replayed row by row.
FENCED_WRITE = "#!lua flags=allow-cross-slot-keys\n" + EPOCH_LUA + """
local ours, generation, force = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local stamp = ARGV[1] .. ' ' .. ARGV[2]
local groups = tonumber(ARGV[6])
local keys_at = 6 + 2 * groups
local n = (#ARGV - keys_at) / 2
local function newer(date)
  return not force and ours ~= '-' and date ~= nil and date > tonumber(ours)
end
local claim, row = {}, 0
for g = 1, groups do
  local fence, count = ARGV[5 + 2 * g], tonumber(ARGV[6 + 2 * g])
  local stored = redis.pcall('GET', fence)
  if stored ~= stamp then
    if type(stored) == 'string' then
      local date, theirs = string.match(stored, '^(%S+) (%d+)$')
      if not theirs or tonumber(theirs) > generation or (date ~= '-' and newer(tonumber(date))) then return -1 end
      claim[#claim + 1] = fence
    elseif not stored and ARGV[5] == '1' then
      claim[#claim + 1] = fence
    end
    -- Not this load's claim (lost, or on another node): each document's own logical date decides.
    for i = row + 1, row + count do
      local held = redis.pcall('JSON.GET', ARGV[keys_at + i], '$.logical_date')
      if type(held) == 'string' then
        local theirs = string.match(held, '^%["(.*)"%]$')
        if newer(theirs and epoch(theirs)) then return -1 end
      end
    end
  end
  row = row + count
end
for _, fence in ipairs(claim) do redis.call('SET', fence, stamp) end
for i = 1, n do
  local key = ARGV[keys_at + i]
  redis.call('JSON.SET', key, '$', ARGV[keys_at + n + i])
  redis.call('PEXPIREAT', key, ARGV[4])
end
return n
"""
FENCED_WRITE_SHA = hashlib.sha1(FENCED_WRITE.encode()).hexdigest()
SLOTS = 16384
REFUSED = b":-1"  # the fenced write's reply when a fence refuses it


def parse_logical_date(value: str, what: str) -> datetime:
    """An ISO-8601 date/time; one without a timezone is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{what} {value!r} is not an ISO-8601 date/time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@functools.lru_cache(maxsize=1)
def slot_tags() -> tuple[str, ...]:
    """A hash tag for every cluster slot (``tags[s]`` hashes to slot ``s``): the shortest decimal numbers that do."""
    import binascii

    tags: list[str | None] = [None] * SLOTS
    missing, number = SLOTS, 0
    while missing:
        text = str(number)
        slot = binascii.crc_hqx(text.encode(), 0) % SLOTS
        if tags[slot] is None:
            tags[slot] = text
            missing -= 1
        number += 1
    return tuple(t for t in tags if t is not None)


def fence_key(settings: StoreConfig, slot: int | None) -> str:
    """The fence of ``slot`` (None: the one fence of a single Redis)."""
    base = f"{settings.lock_key}:FENCE"
    return base if slot is None else f"{base}:{{{slot_tags()[slot]}}}"


@dataclass(frozen=True)
class Fence:
    """What every fenced write of one load carries: its logical date, generation and expiry instant."""

    date: str  # UTC seconds of the logical date, '-' when the run has none
    generation: int  # server time in microseconds when the load took its lock
    force: bool
    expire_at_ms: int  # generation + ttl_s: one instant per load, read back by PEXPIRETIME
    fence_prefix: str  # fence_key(settings, None)

    @property
    def sha(self) -> str:
        return FENCED_WRITE_SHA

    def key_of_slot(self, slot: int | None) -> str:
        return self.fence_prefix if slot is None else f"{self.fence_prefix}:{{{slot_tags()[slot]}}}"

    def arguments(self, create: bool) -> list[str]:
        return [self.date, str(self.generation), "1" if self.force else "0", str(self.expire_at_ms),
                "1" if create else "0"]


def server_time_us(client: Any, key: str) -> int:
    """The clock of the server holding ``key`` (the lock's node), in microseconds: ``INFO server``'s
    ``server_time_usec`` (the load's ACL already allows ``INFO``; ``TIME`` would need one more command)."""
    node = client.get_redis_connection(client.get_node_from_key(key)) if is_cluster(client) else client
    return int(node.info("server")["server_time_usec"])


def fence_for(client: Any, settings: StoreConfig, logical_date: str, generation_us: int | None = None) -> Fence:
    """The fence of a load of ``logical_date``; ``generation_us`` is when it took the lock (default: now)."""
    generation = generation_us if generation_us is not None else server_time_us(client, settings.lock_key)
    date = repr(parse_logical_date(logical_date, "logical date").timestamp()) if logical_date else "-"
    return Fence(date, generation, settings.force, generation // 1000 + int(settings.ttl_s * 1000),
                 fence_key(settings, None))


def load_fenced_write(client: Any) -> None:
    """``SCRIPT LOAD`` the fenced write on every master (a promoted replica may lack it: NOSCRIPT reloads)."""
    nodes = [client.get_redis_connection(n) for n in client.get_primaries()] if is_cluster(client) else [client]
    for node in nodes:
        loaded = node.script_load(FENCED_WRITE)
        if (loaded.decode() if isinstance(loaded, bytes) else loaded) != FENCED_WRITE_SHA:
            raise RuntimeError(f"SCRIPT LOAD returned {loaded!r}, expected {FENCED_WRITE_SHA}")
