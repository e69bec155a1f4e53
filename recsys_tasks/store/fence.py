"""The fenced write: a server-side script that never lets a document of an older logical date replace a newer one.

Each user's ``JSON.SET`` + ``EXPIRE`` runs inside one script that first reads the stored document's
``logical_date``: if it is newer than this run's (and the load is not forced) nothing is written and the
script answers 0, so a writer that stalled past its lock and resumed cannot overwrite a newer run.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from .resilience import is_cluster

# Dates are compared as instants (UTC seconds): the stored one is parsed here, ours is given as a number.
# Accepted: YYYY-MM-DD, then optionally [T ]HH:MM[:SS[.ffffff]] and Z or +HH:MM / -HH:MM (what Python's
# datetime.isoformat writes). A stored date this cannot parse never blocks a write (documents of old versions).
FENCED_WRITE = """
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
if ARGV[3] ~= '' and ARGV[4] ~= '1' then
  local stored = redis.call('JSON.GET', KEYS[1], '$.logical_date')
  if stored then
    local theirs = string.match(stored, '^%["(.*)"%]$')
    local t = theirs and epoch(theirs)
    if t and t > tonumber(ARGV[3]) then return 0 end
  end
end
redis.call('JSON.SET', KEYS[1], '$', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
FENCED_WRITE_SHA = hashlib.sha1(FENCED_WRITE.encode()).hexdigest()


def parse_logical_date(value: str, what: str) -> datetime:
    """An ISO-8601 date/time; one without a timezone is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{what} {value!r} is not an ISO-8601 date/time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def fence_arguments(logical_date: str, force: bool) -> tuple[str, str, str]:
    """``(script sha, this run's logical date as UTC seconds or "" when undated, "1" when forced)``."""
    epoch = repr(parse_logical_date(logical_date, "logical date").timestamp()) if logical_date else ""
    return FENCED_WRITE_SHA, epoch, "1" if force else "0"


def load_fenced_write(client: Any) -> None:
    """``SCRIPT LOAD`` the fenced write on every master (a promoted replica may lack it: NOSCRIPT reloads)."""
    nodes = [client.get_redis_connection(n) for n in client.get_primaries()] if is_cluster(client) else [client]
    for node in nodes:
        loaded = node.script_load(FENCED_WRITE)
        if (loaded.decode() if isinstance(loaded, bytes) else loaded) != FENCED_WRITE_SHA:
            raise RuntimeError(f"SCRIPT LOAD returned {loaded!r}, expected {FENCED_WRITE_SHA}")
