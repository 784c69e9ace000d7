"""The quota policy: the seed's per-user quotas, enforced at SMTP time.

Stock Postfix ignores the tutorial's VDA-patch settings (virtual_mailbox_limit_maps and
friends), so users.quota was never enforced. smtpd asks this policy service at RCPT (with the
SIZE= the client announced) and at END-OF-MESSAGE (with the real size). The recipient is
resolved as Postfix would: virtual aliases first (recursively, each address through the
``aliases`` map), then each final address through ``mailboxes`` and ``quota``. A recipient is
refused only when every final address is a local mailbox over its quota; anything else
passes (DUNNO), so forwards to other servers are never blocked. When the database cannot
answer, or anything else goes wrong, the answer is DEFER_IF_PERMIT, never a rejection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from cachetools import TTLCache

from mailmapd.config import QuotaConfig
from mailmapd.maildir import Usage, maildir_usage
from mailmapd.metrics import Metrics
from mailmapd.proto import Found, NotFound, Result

log = logging.getLogger(__name__)

DUNNO = "DUNNO"
# Postfix stops alias recursion at virtual_alias_recursion_limit (1000); a real alias chain
# is a few levels deep, and past this the policy simply lets Postfix decide.
MAX_ALIAS_DEPTH = 20

# Mailboxes whose usage is kept at most; past it the least recently used goes.
_USAGE_CACHE_SIZE = 100_000


class Lookups(Protocol):
    async def resolve(self, table: str, key: str) -> Result: ...


class _DeferError(Exception):
    """The decision cannot be made now: answer DEFER_IF_PERMIT with this reason."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    address: str
    path: str  # virtual_mailbox_base + the mailboxes map's value
    limit: int  # bytes; 0 = no limit


UsageFunction = Callable[[str, int | None], Usage]


class QuotaPolicy:
    def __init__(
        self,
        lookups: Lookups,
        cfg: QuotaConfig,
        *,
        metrics: Metrics | None = None,
        usage: UsageFunction = maildir_usage,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookups = lookups
        self._cfg = cfg
        self._metrics = metrics
        self._usage_function = usage
        # Each mailbox's usage, reused for usage_cache_ttl seconds; bounded (LRU past the size).
        self._usage_cache: TTLCache[tuple[str, int], Usage] = TTLCache(
            maxsize=_USAGE_CACHE_SIZE, ttl=cfg.usage_cache_ttl, timer=clock
        )
        self._scans: dict[tuple[str, int], asyncio.Task[Usage]] = {}

    async def decide(self, request: dict[str, str]) -> str:
        """The policy action for one request; never raises."""
        try:
            async with asyncio.timeout(self._cfg.timeout):
                action = await self._decide(request)
        except _DeferError as exc:
            action, result = f"DEFER_IF_PERMIT {exc}", "defer"
        except TimeoutError:
            action, result = "DEFER_IF_PERMIT quota check timed out", "defer"
        except Exception:
            log.exception("quota policy: internal error")
            action, result = "DEFER_IF_PERMIT internal error in mailmapd quota policy", "defer"
        else:
            result = "dunno" if action == DUNNO else "reject"
        if self._metrics is not None:
            self._metrics.policy_decisions.labels(result).inc()
        return action

    async def _decide(self, request: dict[str, str]) -> str:
        if request.get("request") != "smtpd_access_policy":
            return DUNNO
        if request.get("protocol_state", "").upper() not in {"RCPT", "END-OF-MESSAGE"}:
            return DUNNO
        recipient = request.get("recipient", "")
        if not recipient:  # END-OF-MESSAGE with several recipients carries none
            return DUNNO
        size = _int(request.get("size", "0"))
        mailboxes = await self._local_mailboxes(recipient)
        if not mailboxes:
            return DUNNO
        for mailbox in mailboxes:
            if not await self._over_quota(mailbox, size):
                return DUNNO
        log.info("quota policy: %s is over quota (message size %d)", recipient, size)
        return self._cfg.reject

    async def _local_mailboxes(self, recipient: str) -> list[Mailbox]:
        """The mailboxes the recipient ends in, or [] when any destination is not local."""
        mailboxes: list[Mailbox] = []
        for address in await self._final_addresses(recipient):
            path = await self._answer("mailboxes", address)
            if path is None:
                return []  # forwarded elsewhere, or unknown: not ours to refuse
            limit = _int(await self._answer("quota", address) or "0")
            full = self._mailbox_path(path)
            if full is None:
                return []
            mailboxes.append(Mailbox(address, full, max(limit, 0)))
        return mailboxes

    async def _final_addresses(self, recipient: str) -> list[str]:
        """Expand virtual aliases as cleanup(8) does; an address aliased to itself is final."""
        final: list[str] = []
        frontier = [recipient]
        seen: set[str] = set()
        for _ in range(MAX_ALIAS_DEPTH):
            following: list[str] = []
            for address in frontier:
                folded = address.casefold()
                if folded in seen:
                    continue
                seen.add(folded)
                value = await self._answer("aliases", address)
                if value is None:
                    final.append(address)
                    continue
                for target in (t.strip() for t in value.split(",")):
                    if not target:
                        continue
                    if target.casefold() == folded:
                        final.append(target)
                    else:
                        following.append(target)
            frontier = following
            if not frontier:
                return final
        log.warning("quota policy: aliases of %s nest deeper than %d levels: not checked", recipient, MAX_ALIAS_DEPTH)
        return []

    async def _answer(self, table: str, key: str) -> str | None:
        result = await self._lookups.resolve(table, key)
        match result:
            case Found(value):
                return value
            case NotFound():
                return None
            case _:
                raise _DeferError(f"lookup failed: {getattr(result, 'reason', result)}")

    def _mailbox_path(self, value: str) -> str | None:
        relative = PurePosixPath(value)
        if relative.is_absolute() or ".." in relative.parts:
            log.warning("quota policy: mailbox path %r is not under mailbox_base: not checked", value)
            return None
        full = str(PurePosixPath(self._cfg.mailbox_base) / relative)
        return full + "/" if value.endswith("/") else full  # a trailing slash means Maildir

    async def _over_quota(self, mailbox: Mailbox, size: int) -> bool:
        if mailbox.limit <= 0:
            return False
        usage = await self._usage(mailbox.path, mailbox.limit)
        return usage.bytes + size > mailbox.limit

    async def _usage(self, path: str, limit: int) -> Usage:
        key = (path, limit)
        cached = self._usage_cache.get(key)
        if cached is not None:
            return cached
        task = self._scans.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._scan(path, limit))
            self._scans[key] = task
            task.add_done_callback(lambda _: self._scans.pop(key, None))
        return await asyncio.shield(task)

    async def _scan(self, path: str, limit: int) -> Usage:
        started = time.perf_counter()
        try:
            usage = await asyncio.to_thread(self._usage_function, path, limit)
        except OSError as exc:
            raise _DeferError(f"cannot read the mailbox: {exc.strerror or exc}") from exc
        if self._metrics is not None:
            self._metrics.quota_scan_seconds.labels(usage.source).observe(time.perf_counter() - started)
        if self._cfg.usage_cache_ttl > 0:
            self._usage_cache[(path, limit)] = usage
        return usage


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return 0
