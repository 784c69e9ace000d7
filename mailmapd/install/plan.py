"""The machinery every component of ``mailmapd install`` writes through.

A component never touches the file system or runs a program itself: it asks its
:class:`Context` to put a file, edit one, make a directory or run a command. The context
decides what that means in this run:

- ``--root DIR``: every path is taken under DIR; commands are recorded, never run.
- ``--dry-run``: nothing is written or run; each file that would change is shown as a
  unified diff (secrets masked) and each command is listed.
- otherwise the change is made, after a backup of the file it replaces.

What it wrote is recorded in a state file (paths and sha256 checksums), which is how a
later run knows that a file was edited by hand since (left alone unless ``--force``) and
how ``--uninstall`` restores the backups and removes the files it created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Where the record of what install wrote lives (under --root when given). Not in
# /var/lib/mailmapd: systemd's StateDirectory= hands that directory, recursively, to the
# daemon's user, and this file holds the admin password and decides what --uninstall writes.
STATE_PATH = "/var/lib/mailmapd-install/state.json"
STATE_VERSION = 1
BACKUP_INFIX = ".mailmapd-backup-"
MASK = "********"

Emit = Callable[[str], None]


class InstallError(Exception):
    """A step cannot go on; the message names the step, the file and the fix."""

    def __init__(self, step: str, path: str | None, problem: str, fix: str) -> None:
        self.step = step
        self.path = path
        self.problem = problem
        self.fix = fix
        where = f"{path}: " if path else ""
        super().__init__(f"step {step}: {where}{problem}; fix: {fix}")


@dataclass(frozen=True, slots=True)
class FileRecord:
    """What install last wrote to one path."""

    sha256: str
    component: str
    created: bool  # no file was there before mailmapd first wrote it
    original_backup: str | None = None  # the file as it was before mailmapd first wrote it
    backups: tuple[str, ...] = ()


@dataclass(slots=True)
class State:
    """The state file's contents: files written, directories created, remembered values."""

    files: dict[str, FileRecord] = field(default_factory=dict)
    dirs: dict[str, str] = field(default_factory=dict)  # path -> component
    values: dict[str, str] = field(default_factory=dict)
    # Under --root: the commands recorded for the operator to run, not run.
    pending_commands: list[str] = field(default_factory=list)
    # Services whose restart was asked for and not done (--no-restart, or a failure).
    pending_restarts: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.files or self.dirs or self.values or self.pending_commands or self.pending_restarts)

    def to_json(self) -> str:
        data = {
            "version": STATE_VERSION,
            "files": {path: _record_json(rec) for path, rec in sorted(self.files.items())},
            "dirs": dict(sorted(self.dirs.items())),
            "values": dict(sorted(self.values.items())),
            "pending_commands": self.pending_commands,
            "pending_restarts": self.pending_restarts,
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> State:
        try:
            data = json.loads(text)
            version = data.get("version")
            files = {
                str(path): FileRecord(
                    sha256=str(rec["sha256"]),
                    component=str(rec["component"]),
                    created=bool(rec["created"]),
                    original_backup=rec.get("original_backup"),
                    backups=tuple(str(b) for b in rec.get("backups", ())),
                )
                for path, rec in data.get("files", {}).items()
            }
            dirs = {str(k): str(v) for k, v in data.get("dirs", {}).items()}
            values = {str(k): str(v) for k, v in data.get("values", {}).items()}
            commands = [str(c) for c in data.get("pending_commands", [])]
            restarts = [str(r) for r in data.get("pending_restarts", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InstallError(
                "state", where, f"unreadable state file ({exc})", "restore it from a backup or move it away"
            ) from exc
        if version != STATE_VERSION:
            raise InstallError(
                "state", where, f"unknown state file version {version!r}", "use the mailmapd that wrote it"
            )
        return cls(files, dirs, values, commands, restarts)


def _record_json(rec: FileRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"sha256": rec.sha256, "component": rec.component, "created": rec.created}
    if rec.original_backup is not None:
        out["original_backup"] = rec.original_backup
    if rec.backups:
        out["backups"] = list(rec.backups)
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Command:
    argv: tuple[str, ...]
    step: str
    why: str

    def shell(self) -> str:
        return " ".join(_shell_quote(a) for a in self.argv)


def _shell_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "-_./:=@,+%" for c in arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


Outcome = Literal["unchanged", "created", "updated", "left-alone", "removed", "restored"]


class Accounts:
    """User and group names to ids, read from the target system's /etc/passwd and /etc/group."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _lookup(self, kind: Literal["passwd", "group"], name: str) -> list[str] | None:
        if self._root == Path("/"):
            try:
                if kind == "passwd":
                    pw = pwd.getpwnam(name)
                    return [pw.pw_name, "x", str(pw.pw_uid), str(pw.pw_gid), "", pw.pw_dir, pw.pw_shell]
                gr = grp.getgrnam(name)
                return [gr.gr_name, "x", str(gr.gr_gid), ",".join(gr.gr_mem)]
            except KeyError:
                return None
        try:
            text = (self._root / "etc" / kind).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            fields = line.split(":")
            if fields and fields[0] == name:
                return fields
        return None

    def user(self, name: str) -> tuple[int, int, str] | None:
        """(uid, gid, home) of ``name``, or None."""
        fields = self._lookup("passwd", name)
        if fields is None or len(fields) < 6:  # noqa: PLR2004 - passwd(5) has 7 fields
            return None
        return int(fields[2]), int(fields[3]), fields[5]

    def group(self, name: str) -> tuple[int, tuple[str, ...]] | None:
        """(gid, members) of ``name``, or None."""
        fields = self._lookup("group", name)
        if fields is None or len(fields) < 3:  # noqa: PLR2004 - group(5) has 4 fields
            return None
        members = tuple(m for m in (fields[3].split(",") if len(fields) > 3 else []) if m)  # noqa: PLR2004
        return int(fields[2]), members


class Context:
    """One run of ``mailmapd install``: where it writes, what it may do, what it did."""

    def __init__(
        self,
        *,
        root: Path,
        emit: Emit,
        dry_run: bool = False,
        force: bool = False,
        show_passwords: bool = False,
        runner: Callable[[Sequence[str]], subprocess.CompletedProcess[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.dry_run = dry_run
        self.force = force
        self.show_passwords = show_passwords
        # Commands run only on the real system and not in a dry run.
        self.live = root == Path("/") and not dry_run
        self._emit = emit
        self._runner = runner or _run
        self.timestamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(clock()))
        self.accounts = Accounts(root)
        self.secrets: set[str] = set()
        self.planned: dict[str, bytes] = {}
        self.changed: list[tuple[str, str]] = []  # (step, path) of files written
        self.left_alone: list[tuple[str, str]] = []
        self.commands: list[Command] = []
        self.restarts: list[str] = []  # services to restart at the end, in order
        self.warnings: list[str] = []
        self.state = self._load_state()
        self._state_text = self.state.to_json()
        self._state_parents: list[Path] = []

    # ----------------------------------------------------------------- output

    def secret(self, *values: str) -> None:
        """Never show these values unless --show-passwords."""
        self.secrets.update(v for v in values if v)

    def mask(self, text: str) -> str:
        if self.show_passwords:
            return text
        for value in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(value, MASK)
        return text

    def say(self, step: str, message: str) -> None:
        """One line of progress for a step."""
        self._emit(self.mask(f"[{step}] {message}"))

    def warn(self, step: str, message: str) -> None:
        self.warnings.append(f"{step}: {message}")
        self._emit(self.mask(f"[{step}] WARNING: {message}"))

    def raw(self, text: str) -> None:
        self._emit(self.mask(text))

    # ----------------------------------------------------------------- paths

    def target(self, path: str) -> Path:
        """The real location of an absolute path of the installed system."""
        if not path.startswith("/"):
            raise ValueError(f"not an absolute path: {path}")
        return self.root / path.lstrip("/")

    def read(self, path: str) -> bytes | None:
        """The file as this run leaves it: planned content if a step wrote it, else the disk's."""
        if path in self.planned:
            return self.planned[path]
        try:
            return self.target(path).read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise InstallError("read", path, "is a directory, expected a file", "move it away") from exc

    def read_text(self, path: str) -> str | None:
        data = self.read(path)
        return None if data is None else data.decode("utf-8", errors="surrogateescape")

    def exists(self, path: str) -> bool:
        return path in self.planned or self.target(path).exists()

    # ----------------------------------------------------------------- files

    def put(
        self,
        step: str,
        path: str,
        content: bytes | str,
        *,
        mode: int,
        owner: str = "root",
        group: str = "root",
        sensitive: bool = False,
    ) -> Outcome:
        """Make ``path`` hold ``content`` with this mode and ownership.

        A file mailmapd wrote before and someone edited since is left alone (unless
        --force); any file replaced is first copied to FILE.mailmapd-backup-TIMESTAMP.
        """
        data = content.encode("utf-8") if isinstance(content, str) else content
        target = self.target(path)
        try:
            current: bytes | None = target.read_bytes()
        except FileNotFoundError:
            current = None
        record = self.state.files.get(path)
        uid, gid, deferred_chown = self._ids(step, path, owner, group)

        if current == data:
            self.planned[path] = data
            fixed = self._fix_metadata(step, path, mode=mode, uid=uid, gid=gid, deferred=deferred_chown)
            if record is not None and record.sha256 != sha256(data):
                self.state.files[path] = dataclasses.replace(record, sha256=sha256(data))
            self.say(step, f"{path}: {'mode/owner fixed' if fixed else 'unchanged'}")
            return "updated" if fixed else "unchanged"

        if current is not None and record is not None and sha256(current) != record.sha256 and not self.force:
            self.left_alone.append((step, path))
            self.planned[path] = current
            self.say(
                step,
                f"{path}: edited since mailmapd wrote it: left alone "
                "(look at it, then run again with --force to replace it after a backup)",
            )
            return "left-alone"

        if self.dry_run:
            self._show_diff(path, current, data, sensitive=sensitive)
            self.planned[path] = data
            self.say(step, f"{path}: would be {'created' if current is None else 'replaced'} (mode {mode:04o})")
            return "created" if current is None else "updated"

        backup = self._backup(target, path) if current is not None else None
        self._make_parents(step, target)
        _atomic_write(target, data, mode, None if deferred_chown else uid, None if deferred_chown else gid)
        if deferred_chown:
            self._record_command(step, ("chown", f"{owner}:{group}", path), "the owner does not exist yet under --root")
        self.planned[path] = data
        if record is None:
            record = FileRecord(sha256(data), step, created=current is None, original_backup=backup)
        else:
            record = dataclasses.replace(record, sha256=sha256(data))
        if backup is not None:
            record = dataclasses.replace(record, backups=(*record.backups, backup))
        self.state.files[path] = record
        self.changed.append((step, path))
        note = f" (backup {backup})" if backup else ""
        self.say(step, f"{path}: {'created' if current is None else 'updated'}{note}")
        return "created" if current is None else "updated"

    def edit(
        self,
        step: str,
        path: str,
        transform: Callable[[str], str],
        *,
        mode: int | None = None,
        owner: str | None = None,
        group: str | None = None,
        missing: Callable[[], str] | None = None,
        missing_fix: str = "",
    ) -> Outcome:
        """Rewrite a text file through ``transform``; mode and owner default to the file's own.

        A missing file is created from ``missing()`` when given, else it is an error whose
        fix is ``missing_fix``.
        """
        text = self.read_text(path)
        if text is None:
            if missing is None:
                raise InstallError(step, path, "no such file", missing_fix)
            text = missing()
        target = self.target(path)
        if target.exists():
            st = target.stat()
            mode = stat.S_IMODE(st.st_mode) if mode is None else mode
            owner = owner or self._name_of_uid(st.st_uid)
            group = group or self._name_of_gid(st.st_gid)
        return self.put(
            step,
            path,
            transform(text).encode("utf-8", errors="surrogateescape"),
            mode=0o644 if mode is None else mode,
            owner=owner or "root",
            group=group or "root",
        )

    def ensure_dir(self, step: str, path: str, *, mode: int, owner: str = "root", group: str = "root") -> Outcome:
        target = self.target(path)
        uid, gid, deferred = self._ids(step, path, owner, group)
        if target.is_dir():
            fixed = self._fix_metadata(step, path, mode=mode, uid=uid, gid=gid, deferred=deferred)
            self.say(step, f"{path}/: {'mode/owner fixed' if fixed else 'unchanged'}")
            return "updated" if fixed else "unchanged"
        if self.dry_run:
            self.raw(f"+ mkdir -m {mode:04o} {path}  (owner {owner}:{group})")
            self.say(step, f"{path}/: would be created")
            return "created"
        self._make_parents(step, target)
        target.mkdir(mode=mode)
        target.chmod(mode)
        self.state.dirs.setdefault(path, step)
        if not deferred and os.geteuid() == 0:
            os.chown(target, uid, gid)
        elif deferred:
            self._record_command(step, ("chown", f"{owner}:{group}", path), "the owner does not exist yet under --root")
        self.changed.append((step, path + "/"))
        self.say(step, f"{path}/: created (mode {mode:04o}, {owner}:{group})")
        return "created"

    # ----------------------------------------------------------------- commands

    def run(self, step: str, argv: Sequence[str], why: str) -> subprocess.CompletedProcess[str] | None:
        """Run a command on the real system; under --root or --dry-run only record it."""
        command = self._record_command(step, tuple(argv), why)
        if not self.live:
            return None
        try:
            result = self._runner(command.argv)
        except FileNotFoundError as exc:
            raise InstallError(
                step, None, f"{command.argv[0]}: not found", f"install the package that provides {command.argv[0]}"
            ) from exc
        if result.returncode != 0:
            output = (result.stderr or result.stdout or "").strip()[-2000:]
            raise InstallError(
                step,
                None,
                f"`{self.mask(command.shell())}` exited {result.returncode}: {self.mask(output)}",
                f"correct the cause, then run mailmapd install again ({why})",
            )
        self.say(step, f"ran: {command.shell()}")
        return result

    def _record_command(self, step: str, argv: tuple[str, ...], why: str) -> Command:
        command = Command(argv, step, why)
        self.commands.append(command)
        if not self.live:
            label = "would run" if self.dry_run else "not run (--root)"
            self.say(step, f"{label}: {command.shell()}  # {why}")
        return command

    def restart(self, service: str) -> None:
        if service not in self.restarts:
            self.restarts.append(service)

    # ----------------------------------------------------------------- state

    @property
    def state_path(self) -> Path:
        return self.target(STATE_PATH)

    def _load_state(self) -> State:
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return State()
        return State.from_json(text, STATE_PATH)

    def save_state(self) -> bool:
        """Write the state file if it changed; True when it was written."""
        text = self.state.to_json()
        if self.dry_run or text == self._state_text:
            return False
        path = self.state_path
        if self.state.is_empty():
            path.unlink(missing_ok=True)
            for directory in (path.parent, *sorted(self._state_parents, reverse=True)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
        else:
            if not path.parent.is_dir():
                self._make_parents("state", path.parent)
                path.parent.mkdir(mode=0o700)
                text = self.state.to_json()
            _atomic_write(path, text.encode("utf-8"), 0o600, None, None)
        self._state_text = text
        return True

    # ----------------------------------------------------------------- uninstall

    def uninstall(self) -> None:
        """Put back what install replaced and remove what it created."""
        for path, record in sorted(self.state.files.items(), reverse=True):
            step = record.component
            target = self.target(path)
            try:
                current: bytes | None = target.read_bytes()
            except FileNotFoundError:
                current = None
            if current is not None and sha256(current) != record.sha256 and not self.force:
                self.left_alone.append((step, path))
                self.say(step, f"{path}: edited since mailmapd wrote it: left alone (--force restores it anyway)")
                continue
            if record.original_backup is not None:
                backup = self.target(record.original_backup)
                if not backup.exists():
                    self.left_alone.append((step, path))
                    self.say(step, f"{path}: its backup {record.original_backup} is gone: left as it is")
                    continue
                if self.dry_run:
                    self._show_diff(path, current, backup.read_bytes(), sensitive=False)
                    self.say(step, f"{path}: would be restored from {record.original_backup}")
                    continue
                if current is not None and self.force and sha256(current) != record.sha256:
                    self._backup(target, path)
                backup.replace(target)
                self.say(step, f"{path}: restored from {record.original_backup}")
            elif record.created:
                if self.dry_run:
                    self.say(step, f"{path}: would be removed")
                    continue
                if current is not None and self.force and sha256(current) != record.sha256:
                    self._backup(target, path)
                target.unlink(missing_ok=True)
                self.say(step, f"{path}: removed (mailmapd created it)")
            others = [b for b in record.backups if b != record.original_backup]
            if others:
                self.say(step, f"{path}: later backups kept: {', '.join(others)}")
            del self.state.files[path]
            self.changed.append((step, path))
        if any(step == "aliases" and path == "/etc/aliases" for step, path in self.changed) and not self.dry_run:
            # postalias(1) keeps its own copy in aliases.db: rebuild it from the restored file,
            # or local(8) keeps sending root's mail to the admin address.
            if not self.target("/etc/aliases").exists():
                self.target("/etc/aliases.db").unlink(missing_ok=True)
            elif not self.target("/etc/postfix/main.cf").exists():
                self.say("aliases", "/etc/aliases.db: not rebuilt (no Postfix main.cf left); run newaliases later")
            else:
                try:
                    self.run("aliases", ["newaliases"], "rebuild aliases.db from the restored /etc/aliases")
                except InstallError as exc:
                    self.say("aliases", f"/etc/aliases.db: not rebuilt ({exc}); run newaliases by hand")
        state_dir = str(Path(STATE_PATH).parent)
        for path, step in sorted(self.state.dirs.items(), reverse=True):
            if self.dry_run:
                continue
            target = self.target(path)
            if state_dir == path or state_dir.startswith(path + "/"):
                # Holds the state file: removed with it, once nothing else is recorded.
                self._state_parents.append(target)
                del self.state.dirs[path]
                continue
            try:
                target.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                self.say(step, f"{path}/: not empty: kept")
                continue
            else:
                self.say(step, f"{path}/: removed (mailmapd created it)")
            del self.state.dirs[path]
        if not self.state.files and not self.state.dirs:
            self.state.values.clear()
            self.state.pending_commands.clear()
            self.state.pending_restarts.clear()

    # ----------------------------------------------------------------- internals

    def _make_parents(self, step: str, target: Path) -> None:
        """mkdir -p the parents of ``target`` (mode 0755), recording the ones it made."""
        missing = [p for p in target.parents if not p.exists() and (p == self.root or self.root in p.parents)]
        for directory in reversed(missing):
            directory.mkdir(mode=0o755)
            self.state.dirs.setdefault("/" + str(directory.relative_to(self.root)), step)

    def _ids(self, step: str, path: str, owner: str, group: str) -> tuple[int, int, bool]:
        user = self.accounts.user(owner)
        grp_ = self.accounts.group(group)
        if user is not None and grp_ is not None:
            return user[0], grp_[0], False
        missing = owner if user is None else group
        if not self.live:
            return 0, 0, True
        raise InstallError(
            step,
            path,
            f"user or group {missing!r} does not exist",
            "create it (or install its package), then run again",
        )

    def _fix_metadata(self, step: str, path: str, *, mode: int, uid: int, gid: int, deferred: bool) -> bool:
        target = self.target(path)
        st = target.stat()
        wrong_mode = stat.S_IMODE(st.st_mode) != mode
        wrong_owner = not deferred and os.geteuid() == 0 and (st.st_uid, st.st_gid) != (uid, gid)
        if not (wrong_mode or wrong_owner):
            return False
        if self.dry_run:
            self.raw(f"+ chmod {mode:04o} / chown {uid}:{gid} {path}")
            return True
        if wrong_owner:
            os.chown(target, uid, gid)
        if wrong_mode:
            target.chmod(mode)
        self.changed.append((step, path))
        return True

    def _backup(self, target: Path, path: str) -> str:
        name = f"{target.name}{BACKUP_INFIX}{self.timestamp}"
        candidate = target.with_name(name)
        n = 1
        while candidate.exists():
            n += 1
            candidate = target.with_name(f"{name}.{n}")
        shutil.copy2(target, candidate)
        if os.geteuid() == 0:
            st = target.stat()
            os.chown(candidate, st.st_uid, st.st_gid)
        return str(Path(path).with_name(candidate.name))

    def _show_diff(self, path: str, old: bytes | None, new: bytes, *, sensitive: bool) -> None:
        if sensitive:
            self.raw(f"--- {path}\n+++ {path} (new)\n@@ key material: {len(new)} bytes, not shown @@")
            return
        before = [] if old is None else old.decode("utf-8", errors="replace").splitlines(keepends=True)
        after = new.decode("utf-8", errors="replace").splitlines(keepends=True)
        lines = difflib.unified_diff(before, after, fromfile=path if old is not None else "/dev/null", tofile=path)
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        if text:
            self.raw(text.rstrip("\n"))

    def metadata(self, path: str) -> tuple[int, str, str] | None:
        """(mode, owner, group) of an existing file, names as the target system has them."""
        try:
            st = self.target(path).stat()
        except FileNotFoundError:
            return None
        return stat.S_IMODE(st.st_mode), self._name_of_uid(st.st_uid), self._name_of_gid(st.st_gid)

    def _name_of_uid(self, uid: int) -> str:
        return _name_of(self.root, "passwd", uid)

    def _name_of_gid(self, gid: int) -> str:
        return _name_of(self.root, "group", gid)


def _name_of(root: Path, kind: str, number: int) -> str:
    if root == Path("/"):
        try:
            return pwd.getpwuid(number).pw_name if kind == "passwd" else grp.getgrgid(number).gr_name
        except KeyError:
            return "root"
    try:
        text = (root / "etc" / kind).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "root"
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2] == str(number):  # noqa: PLR2004
            return fields[0]
    return "root"


def _atomic_write(target: Path, data: bytes, mode: int, uid: int | None, gid: int | None) -> None:
    """Write next to the target, set mode and owner, then rename over it: never a half file,
    and never a moment where a secret sits in a file with looser permissions."""
    tmp = target.with_name(f".{target.name}.mailmapd-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if uid is not None and gid is not None and os.geteuid() == 0:
            os.chown(tmp, uid, gid)
        tmp.chmod(mode)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=300, check=False)  # noqa: S603 - argv built by install


@dataclass(frozen=True, slots=True)
class Options:
    """Choices that are not values written into files, from the command line."""

    listen: Literal["inet", "unix"] = "inet"
    init: Literal["systemd", "sysv"] = "systemd"
    mailmapd_path: str = "/usr/local/bin/mailmapd"
    recipient_delimiter: str | None = None
    restart: bool = True
