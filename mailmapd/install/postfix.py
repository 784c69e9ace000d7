"""postfix: every main.cf setting of the seed's section 5, with mailmapd's socketmap maps in
place of the proxy:mysql ones; the quota policy service; the VDA-patch parameters left out;
virtual(8)'s own mailbox table (the one map Postfix will not take from a socketmap) in
master.cf and a .cf file readable by root and group postfix only.
"""

from __future__ import annotations

from mailmapd.config import SEED_QUERIES
from mailmapd.install import files
from mailmapd.install.layout import (
    MAILBOX_CF,
    MAIN_CF,
    MASTER_CF,
    VMAIL_HOME,
    VMAIL_ID,
    policy_service,
    postfix_hosts,
    socketmap,
)
from mailmapd.install.plan import Context, InstallError, Options
from mailmapd.install.values import Values

NAME = "postfix"

# The VDA patch's parameters: stock Postfix ignores them ("unused parameter"); mailmapd's
# quota policy service enforces users.quota instead (docs/quota.md).
VDA_PARAMETERS = (
    "virtual_maildir_extended",
    "virtual_mailbox_limit_maps",
    "virtual_mailbox_limit_override",
    "virtual_maildir_limit_message",
    "virtual_overquota_bounce",
)
# The seed's proxy_read_maps: it only adds $virtual_mailbox_limit_maps to what Postfix
# already allows. socketmap maps are not proxied, so Postfix's default is the right value.
SEED_PROXY_READ_MAPS = (
    "$local_recipient_maps $mydestination $virtual_alias_maps $virtual_alias_domains $virtual_mailbox_maps"
    " $virtual_mailbox_domains $relay_recipient_maps $relay_domains $canonical_maps $sender_canonical_maps"
    " $recipient_canonical_maps $relocated_maps $transport_maps $mynetworks $virtual_mailbox_limit_maps"
)

# Written when main.cf does not exist yet (a "No configuration" Postfix install).
NEW_MAIN_CF = """\
# /etc/postfix/main.cf, written by mailmapd install. See postconf(5).
compatibility_level = 3.6
recipient_delimiter = +
alias_maps = hash:/etc/aliases
alias_database = hash:/etc/aliases
"""

# SQLite has no CONCAT or SUBSTRING_INDEX: the seed's mailbox path in SQLite's own terms.
SQLITE_MAILBOX_QUERY = (
    "SELECT substr(email, instr(email, '@') + 1) || '/' || substr(email, 1, instr(email, '@') - 1) || '/'"
    " FROM users WHERE email='%s'"
)


def main_cf_settings(fqdn: str, options: Options) -> dict[str, str]:
    """The seed's section 5, as mailmapd needs it."""
    policy = f"check_policy_service {policy_service(options)}"
    return {
        "myhostname": fqdn,
        "mydestination": f"{fqdn}, localhost, localhost.localdomain",
        "mynetworks": "127.0.0.0/8",
        "virtual_alias_domains": "",
        "virtual_alias_maps": socketmap(options, "aliases"),
        "virtual_mailbox_domains": socketmap(options, "domains"),
        "virtual_mailbox_maps": socketmap(options, "mailboxes"),
        "virtual_mailbox_base": VMAIL_HOME,
        "virtual_uid_maps": f"static:{VMAIL_ID}",
        "virtual_gid_maps": f"static:{VMAIL_ID}",
        "smtpd_sasl_auth_enable": "yes",
        "broken_sasl_auth_clients": "yes",
        "smtpd_sasl_authenticated_header": "yes",
        # The seed's smtpd_recipient_restrictions moves to the relay restrictions
        # (Postfix >= 2.10), so the quota check runs for every recipient (docs/quota.md).
        "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
        "smtpd_recipient_restrictions": policy,
        "smtpd_end_of_data_restrictions": policy,
        # The seed's smtpd_use_tls = yes, in the form Postfix >= 2.3 reads first and 3.9 still
        # accepts without a deprecation warning.
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": "/etc/postfix/smtpd.cert",
        "smtpd_tls_key_file": "/etc/postfix/smtpd.key",
        "transport_maps": socketmap(options, "transports"),
    }


def edit_main_cf(text: str, fqdn: str, options: Options) -> str:
    comment_out = dict.fromkeys(VDA_PARAMETERS, "VDA-patch parameter, ignored by stock Postfix (quotas: docs/quota.md)")
    comment_out["smtpd_use_tls"] = "superseded by smtpd_tls_security_level = may"
    proxy_read_maps = files.postfix_value(text, "proxy_read_maps")
    settings = main_cf_settings(fqdn, options)
    if proxy_read_maps is not None:
        tokens = proxy_read_maps.replace(",", " ").split()
        if tokens == SEED_PROXY_READ_MAPS.split():
            comment_out["proxy_read_maps"] = "the seed's value; socketmap maps need no proxy, Postfix's default applies"
        elif "$virtual_mailbox_limit_maps" in tokens:
            settings["proxy_read_maps"] = " ".join(t for t in tokens if t != "$virtual_mailbox_limit_maps")
    return files.set_postfix_params(text, settings, comment_out=comment_out)


def mailbox_cf(values: Values, step: str) -> tuple[str, str]:
    """(map type, .cf text) of virtual(8)'s direct mailbox table, through the read-only account."""
    db = values.database(step)
    header = (
        "# Written by mailmapd install. virtual(8) refuses socketmap for virtual_mailbox_maps\n"
        "# (security-sensitive), so it reads the mailbox path here, as the read-only account.\n"
    )
    if db.scheme == "sqlite":
        return "sqlite", f"{header}dbpath = {db.path}\nquery = {SQLITE_MAILBOX_QUERY}\n"
    lines = {
        "user": values.get("readonly_user", step),
        "password": values.get("readonly_password", step),
        "dbname": db.database,
        "hosts": postfix_hosts(db),
        "query": SEED_QUERIES["mailboxes"],
    }
    return "mysql", header + "".join(f"{key} = {value}\n" for key, value in lines.items())


def apply(ctx: Context, values: Values, options: Options) -> None:
    master = ctx.read_text(MASTER_CF)
    if master is None:
        raise InstallError(
            NAME, MASTER_CF, "no such file: Postfix is not installed", "apt-get install postfix postfix-mysql"
        )
    chrooted = files.chrooted_services(master)
    ctx.say(
        NAME,
        f"{MASTER_CF}: chrooted: {', '.join(chrooted) if chrooted else 'none'}; maps over "
        + (f"{socketmap(options, 'NAME')}" if options.listen == "unix" else "TCP on 127.0.0.1 (works in the chroot)"),
    )
    fqdn = values.get("fqdn", NAME)
    current_main = ctx.read_text(MAIN_CF) or ""
    vda = [name for name in VDA_PARAMETERS if files.postfix_value(current_main, name) is not None]
    if vda:
        ctx.say(
            NAME, f"{MAIN_CF}: commenting out the VDA-patch parameters {', '.join(vda)} (quotas: the policy service)"
        )
    kind, cf_text = mailbox_cf(values, NAME)
    outcomes = [
        ctx.put(NAME, MAILBOX_CF, cf_text, mode=0o640, owner="root", group="postfix"),
        ctx.edit(
            NAME,
            MASTER_CF,
            lambda text: files.set_service_option(
                text,
                service="virtual",
                kind="unix",
                command="virtual",
                name="virtual_mailbox_maps",
                value=f"{kind}:{MAILBOX_CF}",
            ),
        ),
        ctx.edit(
            NAME,
            MAIN_CF,
            lambda text: edit_main_cf(text, fqdn, options),
            missing=lambda: NEW_MAIN_CF,
            mode=None,
        ),
    ]
    if set(outcomes) - {"unchanged", "left-alone"}:
        ctx.restart("postfix")
