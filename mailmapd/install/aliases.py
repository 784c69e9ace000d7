"""aliases: postmaster goes to root and root to the admin address in /etc/aliases, then
newaliases (seed section 8)."""

from __future__ import annotations

from mailmapd.install import files
from mailmapd.install.plan import Context, Options
from mailmapd.install.values import Values

NAME = "aliases"
ALIASES = "/etc/aliases"
NEW_ALIASES = "# See man 5 aliases for format\n"


def apply(ctx: Context, values: Values, options: Options) -> None:  # noqa: ARG001 - one signature for every component
    admin = values.get("admin_address", NAME)
    outcome = ctx.edit(
        NAME,
        ALIASES,
        lambda text: files.set_aliases(text, {"postmaster": "root", "root": admin}),
        missing=lambda: NEW_ALIASES,
        mode=None,
    )
    database = ctx.target(ALIASES + ".db")
    stale = ctx.live and (not database.exists() or database.stat().st_mtime < ctx.target(ALIASES).stat().st_mtime)
    if outcome not in {"unchanged", "left-alone"} or stale:
        ctx.run(NAME, ["newaliases"], "rebuild /etc/aliases.db")
        ctx.restart("postfix")
