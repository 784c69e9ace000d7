"""server.event_loop: the loop `mailmapd serve` runs on (uvloop where installed), and its errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mailmapd.cli import main
from mailmapd.config import ConfigError, parse_config
from mailmapd.daemon import event_loop_factory
from tests.test_service import add_user, config_text, lookup, running, serve_argv


def loop_module(factory_choice: str) -> str:
    loop = event_loop_factory(factory_choice)()
    try:
        return type(loop).__module__.split(".")[0]
    finally:
        loop.close()


@pytest.fixture
def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import uvloop`` fail, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


def test_auto_and_uvloop_run_uvloop_where_installed() -> None:
    assert loop_module("auto") == "uvloop"
    assert loop_module("uvloop") == "uvloop"
    assert loop_module("asyncio") == "asyncio"


@pytest.mark.usefixtures("without_uvloop")
def test_auto_falls_back_to_asyncio_without_uvloop() -> None:
    assert loop_module("auto") == "asyncio"
    assert parse_config({"server": {"event_loop": "auto"}}).server.event_loop == "auto"
    with pytest.raises(ConfigError, match="uvloop"):
        event_loop_factory("uvloop")


@pytest.mark.usefixtures("without_uvloop")
def test_uvloop_required_but_missing_is_a_config_error_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r'^/etc/m\.toml: server\.event_loop: "uvloop" is not installed'):
        parse_config({"server": {"event_loop": "uvloop"}}, "/etc/m.toml")
    config = tmp_path / "mailmapd.toml"
    config.write_text('[server]\nevent_loop = "uvloop"\n')
    assert main(["-c", str(config), "check-config"]) == os.EX_CONFIG
    assert f'{config}: server.event_loop: "uvloop" is not installed' in capsys.readouterr().err


def test_unknown_loop_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"server\.event_loop: must be one of auto, asyncio, uvloop"):
        parse_config({"server": {"event_loop": "tokio"}})


@pytest.mark.parametrize(("choice", "runs"), [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_serve_logs_its_loop_answers_and_stops(sockdir: Path, tmp_path: Path, choice: str, runs: str) -> None:
    """The real daemon on each loop: its unix listener answers, SIGTERM stops it cleanly."""
    address = f"unix:{sockdir}/mailmapd.sock"
    db = tmp_path / "mail.db"
    config = tmp_path / "mailmapd.toml"
    config.write_text(config_text(db, [address]).replace("[server]\n", f'[server]\nevent_loop = "{choice}"\n'))
    with running(serve_argv(config)) as daemon:
        assert any(line.endswith(f"event loop: {runs}") for line in daemon.lines), daemon.log
        add_user(db, "loop@example.test")
        assert lookup(address, "mailboxes", "loop@example.test") == "OK example.test/loop/"
        assert daemon.stop() == 0
