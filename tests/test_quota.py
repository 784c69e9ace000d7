"""The quota policy's decisions, with fake lookups and a fake usage function."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from mailmapd.config import QuotaConfig
from mailmapd.maildir import Usage
from mailmapd.metrics import Metrics
from mailmapd.proto import NOT_FOUND, Found, Result, TempFail
from mailmapd.quota import QuotaPolicy

REJECT = "552 5.2.2 The user you are trying to reach is over quota."


class Lookups:
    def __init__(self, tables: dict[str, dict[str, str]]) -> None:
        self.tables = tables
        self.fail = False

    async def resolve(self, table: str, key: str) -> Result:
        if self.fail:
            return TempFail("database unavailable (connect)")
        value = self.tables.get(table, {}).get(key)
        return Found(value) if value is not None else NOT_FOUND


TABLES = {
    "aliases": {
        "full@d.test": "full@d.test",
        "roomy@d.test": "roomy@d.test",
        "nolimit@d.test": "nolimit@d.test",
        "alias@d.test": "full@d.test",
        "both@d.test": "full@d.test, full2@d.test",
        "mixed@d.test": "full@d.test, roomy@d.test",
        "outside@d.test": "full@d.test,friend@elsewhere.test",
        "chain@d.test": "alias@d.test",
        "full2@d.test": "full2@d.test",
        "loop1@d.test": "loop2@d.test",
        "loop2@d.test": "loop1@d.test",
    },
    "mailboxes": {
        "full@d.test": "d.test/full/",
        "full2@d.test": "d.test/full2/",
        "roomy@d.test": "d.test/roomy/",
        "nolimit@d.test": "d.test/nolimit/",
        "evil@d.test": "../etc/",
    },
    "quota": {"full@d.test": "1000", "full2@d.test": "1000", "roomy@d.test": "1000000", "nolimit@d.test": "0"},
}
USED = {
    "/vmail/d.test/full/": 999,
    "/vmail/d.test/full2/": 1500,
    "/vmail/d.test/roomy/": 10,
    "/vmail/d.test/nolimit/": 10**9,
}


def make(**cfg: object) -> tuple[QuotaPolicy, Lookups, list[str], CollectorRegistry]:
    lookups = Lookups(TABLES)
    scanned: list[str] = []

    def usage(path: str, limit: int | None) -> Usage:
        scanned.append(path)
        return Usage(USED[path], 1, "scan")

    registry = CollectorRegistry()
    policy = QuotaPolicy(
        lookups,
        QuotaConfig(mailbox_base="/vmail", **cfg),  # type: ignore[arg-type]
        metrics=Metrics.create(registry),
        usage=usage,
    )
    return policy, lookups, scanned, registry


def rcpt(recipient: str, size: int = 0, state: str = "RCPT") -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "recipient": recipient,
        "size": str(size),
        "sender": "someone@elsewhere.test",
    }


@pytest.mark.parametrize(
    ("recipient", "size", "action"),
    [
        pytest.param("roomy@d.test", 0, "DUNNO", id="under-quota"),
        pytest.param("full@d.test", 0, "DUNNO", id="at-999-of-1000"),
        pytest.param("full@d.test", 1, "DUNNO", id="exactly-full-is-allowed"),
        pytest.param("full@d.test", 2, REJECT, id="size-crosses-the-limit"),
        pytest.param("full2@d.test", 0, REJECT, id="already-over"),
        pytest.param("nolimit@d.test", 10**9, "DUNNO", id="quota-zero-is-unlimited"),
        pytest.param("alias@d.test", 2, REJECT, id="alias-of-full-mailbox"),
        pytest.param("chain@d.test", 2, REJECT, id="alias-of-alias"),
        pytest.param("both@d.test", 2, REJECT, id="every-destination-full"),
        pytest.param("mixed@d.test", 2, "DUNNO", id="one-destination-has-room"),
        pytest.param("outside@d.test", 2, "DUNNO", id="a-destination-elsewhere"),
        pytest.param("stranger@elsewhere.test", 2, "DUNNO", id="not-local"),
        pytest.param("loop1@d.test", 2, "DUNNO", id="alias-loop"),
        pytest.param("evil@d.test", 2, "DUNNO", id="path-outside-the-base"),
    ],
)
async def test_decisions(recipient: str, size: int, action: str) -> None:
    policy, _, _, _ = make()
    assert await policy.decide(rcpt(recipient, size)) == action


async def test_end_of_message_uses_the_real_size() -> None:
    policy, _, _, _ = make()
    assert await policy.decide(rcpt("full@d.test", 0, "RCPT")) == "DUNNO"
    assert await policy.decide(rcpt("full@d.test", 5000, "END-OF-MESSAGE")) == REJECT


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(
            {"request": "other", "protocol_state": "RCPT", "recipient": "full2@d.test"}, id="not-a-policy-request"
        ),
        pytest.param(
            {"request": "smtpd_access_policy", "protocol_state": "MAIL", "recipient": "full2@d.test"}, id="mail-state"
        ),
        pytest.param(
            {"request": "smtpd_access_policy", "protocol_state": "END-OF-MESSAGE", "recipient": ""},
            id="several-recipients",
        ),
        pytest.param({"request": "smtpd_access_policy", "protocol_state": "RCPT"}, id="no-recipient"),
    ],
)
async def test_requests_it_does_not_judge(request_: dict[str, str]) -> None:
    policy, _, scanned, _ = make()
    assert await policy.decide(request_) == "DUNNO"
    assert scanned == []


async def test_database_failure_defers_never_rejects() -> None:
    policy, lookups, _, registry = make()
    lookups.fail = True
    action = await policy.decide(rcpt("full2@d.test", 10))
    assert action == "DEFER_IF_PERMIT lookup failed: database unavailable (connect)"
    assert registry.get_sample_value("mailmapd_policy_decisions_total", {"result": "defer"}) == 1


async def test_unreadable_mailbox_defers() -> None:
    def broken(path: str, limit: int | None) -> Usage:
        raise PermissionError(13, "Permission denied")

    policy = QuotaPolicy(Lookups(TABLES), QuotaConfig(mailbox_base="/vmail"), usage=broken)
    assert await policy.decide(rcpt("full@d.test", 2)) == "DEFER_IF_PERMIT cannot read the mailbox: Permission denied"


async def test_a_bug_defers() -> None:
    def buggy(path: str, limit: int | None) -> Usage:
        raise ZeroDivisionError

    policy = QuotaPolicy(Lookups(TABLES), QuotaConfig(mailbox_base="/vmail"), usage=buggy)
    assert (await policy.decide(rcpt("full@d.test", 2))).startswith("DEFER_IF_PERMIT internal error")


async def test_a_slow_scan_defers_at_the_deadline() -> None:
    def slow(path: str, limit: int | None) -> Usage:
        import time  # noqa: PLC0415 - only this fake sleeps, in a worker thread

        time.sleep(0.5)
        return Usage(0, 0, "scan")

    policy = QuotaPolicy(Lookups(TABLES), QuotaConfig(mailbox_base="/vmail", timeout=0.05), usage=slow)
    assert await policy.decide(rcpt("full@d.test", 2)) == "DEFER_IF_PERMIT quota check timed out"


async def test_usage_is_cached_and_scans_are_coalesced() -> None:
    policy, _, scanned, registry = make()
    await asyncio.gather(*(policy.decide(rcpt("full@d.test", 2)) for _ in range(5)))
    await policy.decide(rcpt("alias@d.test", 2))
    assert scanned == ["/vmail/d.test/full/"]
    assert registry.get_sample_value("mailmapd_policy_decisions_total", {"result": "reject"}) == 6
    assert registry.get_sample_value("mailmapd_quota_scan_seconds_count", {"source": "scan"}) == 1


async def test_custom_reject_text() -> None:
    policy, _, _, _ = make(reject="452 4.2.2 Mailbox full, try again later")
    assert await policy.decide(rcpt("full2@d.test")) == "452 4.2.2 Mailbox full, try again later"
