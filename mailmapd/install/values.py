"""The values install writes into files: flags first, then what an earlier run chose (the
state file), then a prompt on a terminal, then a generated password or a clear error.

Only the values a selected component asks for are resolved, so ``--only aliases`` asks
for the admin address and nothing else.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from mailmapd.config import ConfigError, DatabaseURL, parse_database_url
from mailmapd.install.plan import Context, InstallError

_FQDN = re.compile(r"(?=.{1,253}\Z)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+")
_LOCAL_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_ADDRESS = re.compile(r"[^\s@,:;<>()\[\]\"\\]{1,64}@[A-Za-z0-9.-]{1,253}")
_ACCOUNT = re.compile(r"[A-Za-z0-9_]{1,32}")
# Characters that survive every file a password goes into unquoted: a pam.d argument
# (split on blanks), Courier's authmysqlrc, Postfix's mysql_table(5), Cyrus SASL's
# smtpd.conf, a TOML string and a URL (percent-encoded there).
_PASSWORD = re.compile(r"[A-Za-z0-9._~+!%^*,:@-]{8,128}")
PASSWORD_RULE = "8 to 128 characters from A-Z a-z 0-9 . _ ~ + ! % ^ * , : @ -"  # noqa: S105 - a rule, not a password

DEFAULT_SUPERUSER_URL = "mysql://root@localhost/mysql?unix_socket=/run/mysqld/mysqld.sock"


@dataclass(frozen=True, slots=True)
class Spec:
    flag: str
    question: str
    check: Callable[[str], str | None]  # None when fine, else what is wrong
    secret: bool = False
    default: str | None = None  # offered at the prompt only
    remember: bool = True  # kept in the state file for the next run


def _check_fqdn(value: str) -> str | None:
    return None if _FQDN.fullmatch(value) else "not a fully qualified domain name like mail.example.com"


def _check_address(value: str) -> str | None:
    ok = _ADDRESS.fullmatch(value) or _LOCAL_USER.fullmatch(value)
    return None if ok else "expected an address (admin@example.com) or a local user name"


def _check_account(value: str) -> str | None:
    return None if _ACCOUNT.fullmatch(value) else "a database account name is 1-32 of A-Z a-z 0-9 _"


def _check_password(value: str) -> str | None:
    return None if _PASSWORD.fullmatch(value) else f"a password here is {PASSWORD_RULE}"


def _check_url(value: str) -> str | None:
    try:
        url = parse_database_url(value, "--database-url")
    except ConfigError as exc:
        return str(exc)
    if url.user or url.password:
        return "give the URL without an account (mysql://127.0.0.1:3306/mail): install creates the accounts"
    if url.scheme == "mysql" and not re.fullmatch(r"[A-Za-z0-9_]{1,64}", url.database):
        return "the database name must be 1-64 of A-Z a-z 0-9 _"
    return None


def _check_superuser(value: str) -> str | None:
    try:
        url = parse_database_url(value, "--db-superuser-url")
    except ConfigError as exc:
        return str(exc)
    return None if url.scheme == "mysql" else "expected a mysql:// URL"


SPECS: dict[str, Spec] = {
    "fqdn": Spec("--hostname", "Fully qualified host name of this mail server", _check_fqdn),
    "admin_address": Spec("--admin-address", "Where mail for root and postmaster goes", _check_address),
    "database_url": Spec(
        "--database-url",
        "Mail database (mysql://HOST:PORT/DBNAME or sqlite:///PATH)",
        _check_url,
        default="mysql://127.0.0.1:3306/mail",
    ),
    "admin_user": Spec(
        "--admin-user", "Database account for the admin commands", _check_account, default="mailmapd_admin"
    ),
    "admin_password": Spec("--admin-password", "Its password (empty: generate one)", _check_password, secret=True),
    "readonly_user": Spec(
        "--readonly-user", "Read-only database account for lookups", _check_account, default="mailmapd_ro"
    ),
    "readonly_password": Spec(
        "--readonly-password", "Its password (empty: generate one)", _check_password, secret=True
    ),
    "superuser_url": Spec(
        "--db-superuser-url",
        "Account that may create databases and accounts",
        _check_superuser,
        default=DEFAULT_SUPERUSER_URL,
        remember=False,
    ),
}


class Values:
    """Resolves and remembers the install values (see the module docstring)."""

    def __init__(
        self,
        ctx: Context,
        flags: dict[str, str | None],
        *,
        interactive: bool,
        ask: Callable[[str], str],
        ask_secret: Callable[[str], str],
    ) -> None:
        self._ctx = ctx
        self._flags = flags
        self._interactive = interactive
        self._ask = ask
        self._ask_secret = ask_secret
        self._cache: dict[str, str] = {}
        self.generated: list[str] = []

    def get(self, name: str, step: str) -> str:
        if name in self._cache:
            return self._cache[name]
        spec = SPECS[name]
        value = self._flags.get(name)
        source = "flag"
        if value is None and spec.remember:
            value = self._ctx.state.values.get(name)
            source = "state"
        if value is None and self._interactive:
            value = self._prompt(spec)
            source = "prompt"
        if not value and name in {"admin_user", "readonly_user", "superuser_url"} and spec.default:
            value = spec.default  # names with a safe default need no answer
        if not value and spec.secret:
            value = secrets.token_urlsafe(24)
            self.generated.append(name)
            source = "generated"
        if not value:
            raise InstallError(
                step,
                None,
                f"no value for {spec.flag} ({spec.question.lower()})",
                f"give {spec.flag} VALUE (no terminal to ask on)",
            )
        problem = spec.check(value)
        if problem is not None:
            raise InstallError(
                step, None, f"{spec.flag} {value if not spec.secret else '...'}: {problem}", f"give a valid {spec.flag}"
            )
        if spec.secret:
            self._ctx.secret(value, quote(value, safe=""))
        if spec.remember and self._ctx.state.values.get(name) != value:
            self._ctx.state.values[name] = value
        if source == "generated":
            self._ctx.say(
                step,
                f"generated a password for {spec.flag.removesuffix('-password').lstrip('-')} (see --show-passwords)",
            )
        self._cache[name] = value
        return value

    def _prompt(self, spec: Spec) -> str:
        suffix = f" [{spec.default}]" if spec.default else ""
        while True:
            raw = (self._ask_secret if spec.secret else self._ask)(f"{spec.question}{suffix}: ").strip()
            value = raw or (spec.default or "")
            if not value or spec.check(value) is None:
                return value
            problem = spec.check(value)
            self._ctx.raw(f"  {problem}")

    # ---------------------------------------------------------------- derived values

    def database(self, step: str) -> DatabaseURL:
        return parse_database_url(self.get("database_url", step), "--database-url")

    def readonly_url(self, step: str) -> str:
        """The daemon's database.url: the mail database through the read-only account."""
        db = self.database(step)
        if db.scheme == "sqlite":
            return f"sqlite://{db.path}"
        return with_account(
            self.get("database_url", step), self.get("readonly_user", step), self.get("readonly_password", step)
        )

    def admin_url(self, step: str) -> str:
        db = self.database(step)
        if db.scheme == "sqlite":
            return f"sqlite://{db.path}"
        return with_account(
            self.get("database_url", step), self.get("admin_user", step), self.get("admin_password", step)
        )


def with_account(url: str, user: str, password: str) -> str:
    """``mysql://HOST/DB`` with ``user:password@`` put in, both percent-encoded."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"
