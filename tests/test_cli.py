"""The mailmapd command: `query` exit codes and `serve` as a real process answering postmap."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mailmapd.cli import EXIT_FOUND, EXIT_NOT_FOUND, EXIT_TEMPFAIL, main
from tests.support.ports import free_port


def write_config(path: Path, url: str, listen: str = "") -> Path:
    path.write_text(
        f'log_level = "info"\n[database]\nurl = "{url}"\nconnect_timeout = 1.0\n'
        f'[metrics]\naddress = ""\n[server]\ncontrol_socket = ""\n{listen}'
    )
    return path


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Path:
    db = tmp_path / "mail.db"
    cfg = write_config(tmp_path / "mailmapd.toml", f"sqlite://{db}")
    # The first run creates the tutorial's tables; then add one user.
    assert main(["--config", str(cfg), "query", "domains", "example.test"]) == EXIT_NOT_FOUND
    subprocess.run(
        ["sqlite3", str(db), "INSERT INTO users VALUES ('sales@example.test', 'x', 1024)"],
        check=True,
    )
    return cfg


def test_query_found_prints_the_value(sqlite_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(sqlite_config), "query", "mailboxes", "Sales+Tag@Example.TEST"]) == EXIT_FOUND
    assert capsys.readouterr().out == "example.test/sales/\n"


def test_query_not_found(sqlite_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(sqlite_config), "query", "mailboxes", "nobody@example.test"]) == EXIT_NOT_FOUND
    assert capsys.readouterr().out == ""


def test_query_database_down_is_tempfail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "m.toml", f"mysql://u:pw@127.0.0.1:{free_port()}/mail")
    assert main(["-c", str(cfg), "query", "mailboxes", "a@example.test"]) == EXIT_TEMPFAIL
    assert "temporary failure: database unavailable (connect)" in capsys.readouterr().err


def test_query_unknown_map_is_a_usage_error(sqlite_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["-c", str(sqlite_config), "query", "nosuchmap", "k"])
    assert info.value.code == os.EX_USAGE
    assert "invalid choice: 'nosuchmap'" in capsys.readouterr().err


def test_missing_config_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["-c", str(missing), "check-config"]) == os.EX_CONFIG
    assert f"{missing}: cannot read" in capsys.readouterr().err


def test_serve_answers_postmap_and_stops_on_sigterm(sqlite_config: Path, tmp_path: Path) -> None:
    sock = tmp_path / "mailmapd.sock"
    cfg = tmp_path / "serve.toml"
    cfg.write_text(sqlite_config.read_text() + f'[[listen]]\nprotocol = "socketmap"\naddress = "unix:{sock}"\n')
    postfix_dir = tmp_path / "pf"
    postfix_dir.mkdir()
    (postfix_dir / "main.cf").write_text("compatibility_level = 3.6\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailmapd", "-c", str(cfg), "serve"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait for the readiness line, bounded by the test timeout
            if "mailmapd ready" in line:
                break
        postmap = shutil.which("postmap") or "/usr/sbin/postmap"
        result = subprocess.run(
            [postmap, "-c", str(postfix_dir), "-q", "sales+x@example.test", f"socketmap:unix:{sock}:mailboxes"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (result.returncode, result.stdout) == (0, "example.test/sales/\n"), result.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not sock.exists()  # the socket file is removed on exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
