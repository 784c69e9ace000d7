"""Postfix itself as the oracle: its mysql: client on the seed's own six .cf files.

``postmap -q`` asks one key and never walks a search order (postmap(1)), so the oracle
walks each main.cf parameter's order the way Postfix's daemons do (mail_addr_find(),
transport_lookup(), reference/postfix-lookups.md section 6) and asks Postfix at each step.
This walk is written here independently of mailmapd.maps on purpose.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tests.support.mariadb import DatabaseAccount

SEED_CF = Path(__file__).parent / "data" / "seed-cf"

CF_FILES = {
    "domains": "mysql-virtual_domains.cf",
    "forwardings": "mysql-virtual_forwardings.cf",
    "mailboxes": "mysql-virtual_mailboxes.cf",
    "email2email": "mysql-virtual_email2email.cf",
    "transports": "mysql-virtual_transports.cf",
    "quota": "mysql-virtual_mailbox_limit_maps.cf",
}


def write_seed_cf(directory: Path, account: DatabaseAccount) -> Path:
    """The seed's .cf files with hosts/user/password/dbname pointing at ``account``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "main.cf").write_text("compatibility_level = 3.6\nsmtputf8_enable = yes\n")
    for name in CF_FILES.values():
        lines = []
        for line in (SEED_CF / name).read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            replacement = {
                "user": account.user,
                "password": account.password,
                "dbname": account.database,
                "hosts": f"inet:{account.host}:{account.port}",
            }.get(key)
            lines.append(f"{key} = {replacement}" if replacement is not None else line)
        (directory / name).write_text("\n".join(lines) + "\n")
        (directory / name).chmod(0o640)
    return directory


def postmap_batch(config_dir: Path, table: str, keys: Iterable[str]) -> dict[str, str]:
    """``postmap -q - TABLE``: the value of every key that was found."""
    wanted = [k for k in dict.fromkeys(keys) if k and "\n" not in k]
    postmap = shutil.which("postmap") or "/usr/sbin/postmap"
    result = subprocess.run(
        [postmap, "-c", str(config_dir), "-q", "-", table],
        input="".join(k + "\n" for k in wanted),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # mysql_table(5) warns about '' results it skips; anything else is a failure.
    problems = [line for line in result.stderr.splitlines() if "empty lookup result" not in line]
    if problems:
        raise AssertionError(f"postmap {table} failed:\n{result.stderr}")
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("\t")
        found[key] = value
    return found


def _split(local: str) -> tuple[str, str] | None:
    """split_addr() with recipient_delimiter = + (the reserved names contain no +)."""
    i = local.find("+")
    return None if i <= 0 else (local[:i], local[i:])


def address_walk(key: str) -> list[tuple[str, str | None]]:
    """mail_addr_find() for a virtual domain: (key, extension carried if it matches)."""
    local, at, domain = key.rpartition("@")
    if not at:
        local, domain = key, ""
    steps: list[tuple[str, str | None]] = [(key, None)]
    split = _split(local)
    if split:
        steps.append((split[0] + (f"@{domain}" if at else ""), split[1]))
    if at and local:
        steps.append((f"@{domain}", None))
    return steps


def transport_walk(key: str) -> list[str]:
    local, at, domain = key.rpartition("@")
    steps: list[str] = []
    if at:
        steps.append(key)
        split = _split(local)
        if split:
            steps.append(f"{split[0]}@{domain}")
    else:
        domain = key
    name = domain
    while name:
        steps.append(name)
        dot = name.find(".", 1)
        if dot < 0:
            break
        name = name[dot:]
    steps.append("*")
    return steps


def with_extension(value: str, extension: str) -> str:
    """propagate_unmatched_extensions: +ext before the @ of each address of the result."""
    out = []
    for item in value.split(","):
        address = item.strip()
        if address:
            head, at, tail = address.rpartition("@")
            out.append(f"{head}{extension}@{tail}" if at else address + extension)
    return ",".join(out)


class PostfixOracle:
    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir

    def table(self, name: str, keys: Iterable[str]) -> dict[str, str]:
        return postmap_batch(self.config_dir, f"mysql:{self.config_dir / CF_FILES[name]}", keys)

    def answers(self, map_name: str, keys: list[str]) -> dict[str, str | None]:
        """What Postfix's lookups through the seed's .cf files find for each key."""
        if map_name in {"domains", "forwardings", "email2email"}:
            found = self.table(map_name, keys)
            return {k: found.get(k) for k in keys}
        if map_name in {"mailboxes", "quota"}:
            found = self.table(map_name, [s for k in keys for s, _ in address_walk(k)])
            return {k: next((found[s] for s, _ in address_walk(k) if s in found), None) for k in keys}
        if map_name == "transports":
            found = self.table("transports", [s for k in keys for s in transport_walk(k)])
            return {k: next((found[s] for s in transport_walk(k) if s in found), None) for k in keys}
        assert map_name == "aliases"
        steps = [s for k in keys for s, _ in address_walk(k)]
        fwd, e2e = self.table("forwardings", steps), self.table("email2email", steps)
        out: dict[str, str | None] = {}
        for k in keys:
            out[k] = None
            for step, ext in address_walk(k):
                value = fwd.get(step) or e2e.get(step)
                if value is not None:
                    out[k] = with_extension(value, ext) if ext else value
                    break
        return out
