"""Pure text edits of the configuration files install changes: main.cf, master.cf,
shell-style KEY=value files, /etc/aliases and certificate templates.

Each function takes the file's text and returns the new text, changing only what it must
and keeping every other line, comment and blank line as it was. Applying one twice gives
the same text as applying it once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_PARAM = re.compile(r"^([A-Za-z0-9_]+)\s*=")
_SHELL_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")
_ALIAS = re.compile(r"^([^\s:#][^:]*?)\s*:")


def _logical_lines(text: str) -> list[list[str]]:
    """Group physical lines: a line that starts with whitespace (and is not blank or a
    comment) continues the one before, as in main.cf, master.cf and aliases(5)."""
    groups: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        continues = line[:1] in (" ", "\t") and stripped and not stripped.startswith("#")
        if continues and groups and not groups[-1][0].lstrip().startswith("#") and groups[-1][0].strip():
            groups[-1].append(line)
        else:
            groups.append([line])
    return groups


def _ensure_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


# ----------------------------------------------------------------------------- main.cf


def postfix_value(text: str, name: str) -> str | None:
    """The value main.cf gives ``name`` (the last definition wins, as in Postfix), or None."""
    value: str | None = None
    for group in _logical_lines(text):
        match = _PARAM.match(group[0])
        if match and match[1] == name:
            joined = " ".join(part.strip() for part in group)
            value = joined.split("=", 1)[1].strip()
    return value


def set_postfix_params(
    text: str,
    settings: Mapping[str, str],
    *,
    comment_out: Mapping[str, str] | None = None,
) -> str:
    """What ``postconf -e`` does for ``settings`` (replace in place, append the rest), and
    what ``postconf -#`` does for ``comment_out`` (name -> reason, written above it)."""
    comment_out = comment_out or {}
    out: list[str] = []
    done: set[str] = set()
    for group in _logical_lines(_ensure_newline(text)):
        match = _PARAM.match(group[0])
        name = str(match[1]) if match else ""
        if name in settings:
            if name not in done:
                out.append(_param_line(name, settings[name]))
                done.add(name)
            continue  # a later duplicate would override ours: drop it
        if name in comment_out:
            out.append(f"# mailmapd install: {comment_out[name]}\n")
            out.extend("#" + line for line in group)
            continue
        out.extend(group)
    missing = [name for name in settings if name not in done]
    if missing:
        if out and out[-1].strip():
            out.append("\n")
        out.append("# mailmapd install (see docs/install.md)\n")
        out.extend(_param_line(name, settings[name]) for name in missing)
    return "".join(out)


def _param_line(name: str, value: str) -> str:
    return f"{name} = {value}\n" if value else f"{name} =\n"


# ----------------------------------------------------------------------------- master.cf


@dataclass(frozen=True, slots=True)
class MasterEntry:
    service: str
    kind: str
    private: str
    unpriv: str
    chroot: str
    command: str
    args: tuple[str, ...]


def master_entries(text: str) -> list[MasterEntry]:
    entries: list[MasterEntry] = []
    for group in _logical_lines(text):
        head = group[0]
        if not head.strip() or head.lstrip().startswith("#") or head[:1].isspace():
            continue
        fields = " ".join(part.strip() for part in group).split()
        if len(fields) < 8:  # noqa: PLR2004 - master(5) has 8 columns before the arguments
            continue
        entries.append(MasterEntry(fields[0], fields[1], fields[2], fields[3], fields[4], fields[7], tuple(fields[8:])))
    return entries


def chrooted_services(text: str, commands: Iterable[str] = ("smtpd", "cleanup", "trivial-rewrite")) -> list[str]:
    """The services running one of ``commands`` chrooted (chroot column ``y``, or ``-``,
    which Debian's Postfix builds take as yes)."""
    wanted = set(commands)
    return [f"{e.service}/{e.kind}" for e in master_entries(text) if e.command in wanted and e.chroot in {"y", "-"}]


def set_service_option(text: str, *, service: str, kind: str, command: str, name: str, value: str) -> str:
    """Give the master.cf service ``service``/``kind`` the override ``-o name=value``,
    replacing an existing ``-o name=...``; add the service (as Debian defines virtual) if
    master.cf has none."""
    option = f"{name}={value}"
    out: list[str] = []
    found = False
    for group in _logical_lines(_ensure_newline(text)):
        fields = group[0].split()
        is_entry = (
            not found
            and len(fields) >= 8  # noqa: PLR2004
            and not group[0][:1].isspace()
            and fields[0] == service
            and fields[1] == kind
        )
        if not is_entry:
            out.extend(group)
            continue
        found = True
        head, rest = group[0], group[1:]
        kept: list[str] = []
        replaced = False
        for line in rest:
            tokens = line.split()
            if len(tokens) == 2 and tokens[0] == "-o" and tokens[1].split("=", 1)[0].strip() == name:  # noqa: PLR2004
                if not replaced:
                    kept.append(f"  -o {option}\n")
                    replaced = True
                continue
            kept.append(line)
        if not replaced:
            kept.append(f"  -o {option}\n")
        out.append(head)
        out.extend(kept)
    if not found:
        out.append(f"{service:<9} {kind:<5} -       n       n       -       -       {command}\n")
        out.append(f"  -o {option}\n")
    return "".join(out)


# ----------------------------------------------------------------------------- KEY=value


def set_shell_vars(text: str, settings: Mapping[str, str], *, preambles: Mapping[str, str] | None = None) -> str:
    """Set ``KEY=value`` lines of a shell-style file (/etc/default/saslauthd, authdaemonrc):
    each value replaces the first uncommented assignment and later ones are dropped. A key
    with no assignment goes before the first assignment of the file, after its preamble
    comment if one is given, or at the end."""
    preambles = preambles or {}
    lines = _ensure_newline(text).splitlines(keepends=True)
    out: list[str] = []
    done: set[str] = set()
    first_assignment: int | None = None
    for line in lines:
        match = _SHELL_ASSIGN.match(line)
        if match and first_assignment is None:
            first_assignment = len(out)
        if match and match[1] in settings:
            key = match[1]
            if key not in done:
                out.append(f"{key}={settings[key]}\n")
                done.add(key)
            continue
        out.append(line)
    insert: list[str] = []
    append: list[str] = []
    for key, value in settings.items():
        if key in done:
            continue
        if key in preambles and first_assignment is not None:
            insert.extend([*(f"{c}\n" for c in preambles[key].splitlines()), f"{key}={value}\n", "\n"])
        else:
            append.append(f"{key}={value}\n")
    if insert and first_assignment is not None:
        # Before the comment block that introduces the first assignment, as the seed shows it.
        at = first_assignment
        while at > 0 and out[at - 1].startswith("#"):
            at -= 1
        out[at:at] = insert
    return "".join(out) + "".join(append)


def shell_var(text: str, key: str) -> str | None:
    for line in text.splitlines():
        match = _SHELL_ASSIGN.match(line)
        if match and match[1] == key:
            return line.split("=", 1)[1].strip()
    return None


# ----------------------------------------------------------------------------- /etc/aliases


def set_aliases(text: str, aliases: Mapping[str, str]) -> str:
    """Make each ``name: value`` of ``aliases`` the only definition of that name."""
    out: list[str] = []
    done: set[str] = set()
    for group in _logical_lines(_ensure_newline(text)):
        match = _ALIAS.match(group[0])
        name = str(match[1]).strip().lower() if match and not group[0][:1].isspace() else ""
        if name in aliases:
            if name not in done:
                out.append(f"{name}: {aliases[name]}\n")
                done.add(name)
            continue
        out.extend(group)
    out.extend(f"{name}: {value}\n" for name, value in aliases.items() if name not in done)
    return "".join(out)


def alias_value(text: str, name: str) -> str | None:
    for group in _logical_lines(text):
        match = _ALIAS.match(group[0])
        if match and match[1].strip().lower() == name:
            return " ".join(part.strip() for part in group).split(":", 1)[1].strip()
    return None


# ----------------------------------------------------------------------------- certificate templates

_CN_LINE = re.compile(r"^(\s*)(cn|CN)(\s*)=(\s*)(.*?)\s*$")


def set_common_name(text: str, cn: str) -> str:
    """Set the CN of a certificate template: ``CN=name`` in an OpenSSL config (the seed's
    imapd.cnf), ``cn = "name"`` in a GnuTLS certtool template (Debian 12's)."""
    lines = _ensure_newline(text).splitlines(keepends=True)
    openssl = any(line.strip().startswith("[") for line in lines)
    for i, line in enumerate(lines):
        match = _CN_LINE.match(line)
        if match is None:
            continue
        quoted = match[5].startswith('"')
        value = f'"{cn}"' if quoted or not openssl else cn
        lines[i] = f"{match[1]}{match[2]}{match[3]}={match[4]}{value}\n"
        return "".join(lines)
    lines.append(f"CN={cn}\n" if openssl else f'cn = "{cn}"\n')
    return "".join(lines)


def template_fields(text: str) -> dict[str, str]:
    """The subject fields of a certificate template, lower-case names, quotes removed."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep or line.lstrip().startswith(("#", ";", "[")):
            continue
        fields[name.strip().lower()] = value.strip().strip('"')
    return fields
