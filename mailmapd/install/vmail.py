"""vmail: the group and user vmail 5000:5000 that own the mailboxes under /home/vmail
(seed section 5: groupadd -g 5000 vmail; useradd -g vmail -u 5000 vmail -d /home/vmail -m)."""

from __future__ import annotations

import os

from mailmapd.install.layout import VMAIL_HOME, VMAIL_ID, VMAIL_USER
from mailmapd.install.plan import Context, InstallError, Options
from mailmapd.install.values import Values

NAME = "vmail"


def apply(ctx: Context, values: Values, options: Options) -> None:  # noqa: ARG001 - one signature for every component
    group = ctx.accounts.group(VMAIL_USER)
    if group is None:
        ctx.run(NAME, ["groupadd", "-g", str(VMAIL_ID), VMAIL_USER], "the mailboxes' group")
    elif group[0] != VMAIL_ID:
        raise InstallError(
            NAME,
            "/etc/group",
            f"group {VMAIL_USER} exists with gid {group[0]}, main.cf needs {VMAIL_ID} (virtual_gid_maps = static:{VMAIL_ID})",
            f"groupmod -g {VMAIL_ID} {VMAIL_USER} (and chgrp its files), then run again",
        )
    user = ctx.accounts.user(VMAIL_USER)
    if user is None:
        ctx.run(
            NAME,
            [
                "useradd",
                "-g",
                VMAIL_USER,
                "-u",
                str(VMAIL_ID),
                "-d",
                VMAIL_HOME,
                "-m",
                "-s",
                "/usr/sbin/nologin",
                VMAIL_USER,
            ],
            "owns the mailboxes under /home/vmail",
        )
    else:
        uid, gid, home = user
        if (uid, gid) != (VMAIL_ID, VMAIL_ID):
            raise InstallError(
                NAME,
                "/etc/passwd",
                f"user {VMAIL_USER} is {uid}:{gid}, main.cf needs {VMAIL_ID}:{VMAIL_ID} (static:{VMAIL_ID})",
                f"usermod -u {VMAIL_ID} -g {VMAIL_ID} {VMAIL_USER} (and chown its files), then run again",
            )
        if home != VMAIL_HOME:
            ctx.warn(NAME, f"user {VMAIL_USER} has home {home}; virtual_mailbox_base is {VMAIL_HOME}")
        if group is not None:
            ctx.say(NAME, f"user and group {VMAIL_USER} {VMAIL_ID}:{VMAIL_ID}: unchanged")
    home_dir = ctx.target(VMAIL_HOME)
    if home_dir.is_dir():
        owner = home_dir.stat().st_uid
        if user is not None and owner != VMAIL_ID and os.geteuid() == 0:
            ctx.warn(
                NAME,
                f"{VMAIL_HOME} belongs to uid {owner}, not {VMAIL_ID}: chown -R {VMAIL_ID}:{VMAIL_ID} {VMAIL_HOME}",
            )
    elif user is not None or not ctx.live:
        # useradd -m makes it; here the user exists without it, or --root records useradd.
        ctx.ensure_dir(NAME, VMAIL_HOME, mode=0o700, owner=VMAIL_USER, group=VMAIL_USER)
