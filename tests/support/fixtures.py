"""pytest fixtures for the real peers. Load with ``pytest_plugins = ["tests.support.fixtures"]``.

A missing binary fails the test with the Debian package to install; it never skips.
scripts/test installs the packages, so nothing real is skipped in CI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pytest

from tests.support.mariadb import MariaDB, MissingBinaryError
from tests.support.postfix import PostfixError, PostfixInstance

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = ["PostfixFactory", "mariadb", "postfix_factory", "private_mariadb"]


class PostfixFactory(Protocol):
    """Start a private Postfix; the fixture stops every instance at teardown."""

    def __call__(
        self,
        main_overrides: Mapping[str, str],
        virtual_overrides: Mapping[str, str] | None = None,
        extra_master: str = "",
    ) -> PostfixInstance: ...


def _open(server: MariaDB) -> MariaDB:
    try:
        server.open()
    except MissingBinaryError as exc:
        server.close()
        pytest.fail(str(exc), pytrace=False)
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """One started MariaDB for the session: private, or the external MAILMAPD_TEST_MYSQL one.

    A test that stops, kills or pauses it must bring it back before it returns; tests
    that simulate outages should take ``private_mariadb`` instead.
    """
    server = _open(MariaDB.from_env())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_mariadb() -> Iterator[MariaDB]:
    """A started private MariaDB for this test alone, ours to stop, kill and pause (about 1 s to set up)."""
    server = _open(MariaDB.private())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postfix_factory() -> Iterator[PostfixFactory]:
    """A callable that starts private Postfix instances; all are stopped and removed at teardown."""
    instances: list[PostfixInstance] = []

    def start(
        main_overrides: Mapping[str, str],
        virtual_overrides: Mapping[str, str] | None = None,
        extra_master: str = "",
    ) -> PostfixInstance:
        try:
            instance = PostfixInstance(main_overrides, virtual_overrides, extra_master)
        except PostfixError as exc:
            pytest.fail(str(exc), pytrace=False)
        instances.append(instance)
        instance.start()
        return instance

    try:
        yield start
    finally:
        errors: list[BaseException] = []
        for instance in reversed(instances):
            try:
                instance.close()
            except Exception as exc:  # noqa: BLE001  # stop the others, then report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]
