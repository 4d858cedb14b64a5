# The helper's reads: files and folder listings (see `_helper.py`). Runs in the container:
# python3 >= 3.6, standard library only.
import errno
import os
import stat

from _helper_frames import CHUNK, DATA_OUT, DONE, FAIL, fail, os_error_kind, send, send_json

# Reads refuse anything but a regular file, and never follow a link at any component of the
# path: each folder is opened in turn with O_NOFOLLOW, relative to the one before. The final
# name is lstat-ed first, so a device is refused without being opened, then opened with
# O_NOFOLLOW | O_NONBLOCK and checked again with fstat: a file swapped for a link between the
# two fails to open (ELOOP), and one swapped for a FIFO opens at once and is refused.
_PATH = getattr(os, "O_PATH", os.O_RDONLY)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "link"),
          (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char_device"),
          (stat.S_ISBLK, "block_device"), (stat.S_ISSOCK, "socket"))
# Kernel interfaces that look like regular files but are not: sizes of 0 or 4096 whatever
# they hold, reads that may block or change state. Files on these are refused.
PSEUDO_FILESYSTEMS = frozenset([
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs",
    "securityfs", "configfs", "bpf", "pstore", "fusectl", "binfmt_misc", "efivarfs",
    "selinuxfs", "autofs", "nsfs", "rpc_pipefs"])
_pseudo_devices = []  # filled once: the st_dev of every pseudo-filesystem mount
MAX_WALK_ENTRIES = 100000  # a listing is read into the host's memory: bound it


class Refused(Exception):
    """A read refused: `error` is the FAIL frame's kind, `what` names the file's kind."""

    def __init__(self, error, what, shown):
        Exception.__init__(self, "%s: not a regular file (%s)" % (shown, what))
        self.error, self.what = error, what


def check_kind(shown, mode):
    what = [name for test, name in _KINDS if test(mode)][:1] or ["other"]
    if what[0] != "file":
        raise Refused("is_directory" if what[0] == "dir" else "not_regular", what[0], shown)


def pseudo_devices():
    if not _pseudo_devices:
        devices = set()
        try:  # mountinfo: "id parent major:minor root mountpoint ... - fstype source ..."
            with open("/proc/self/mountinfo", "rb") as f:
                for line in f:
                    before, _, after = line.decode("utf-8", "replace").partition(" - ")
                    if after.split(" ", 1)[0] in PSEUDO_FILESYSTEMS:
                        major, minor = before.split()[2].split(":")
                        devices.add(os.makedev(int(major), int(minor)))
        except (OSError, ValueError, IndexError):
            pass  # no /proc mounted: then no procfs files to refuse either
        _pseudo_devices.append(devices)
    return _pseudo_devices[0]


def open_folder(parts, path, shown):
    """An O_PATH descriptor of the folder `parts` name, no component of it being a link."""
    fd = os.open(b"/" if path.startswith(b"/") else b".", _PATH | os.O_DIRECTORY)
    try:
        for part in parts:
            try:
                inner = os.open(part, _PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP) and stat.S_ISLNK(
                        os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise Refused("not_regular", "link_in_path", shown) from None
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path, shown):
    """A descriptor open for reading on the regular file `path` (bytes), and its size."""
    parts = [part for part in path.split(b"/") if part not in (b"", b".")]
    folder = open_folder(parts[:-1], path, shown)
    try:
        if not parts:
            raise Refused("is_directory", "dir", shown)
        st = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
        check_kind(shown, st.st_mode)
        if st.st_dev in pseudo_devices():  # before the open, which some refuse (/proc/1/*)
            raise Refused("not_regular", "pseudo", shown)
        try:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a link since the lstat
                raise Refused("not_regular", "link", shown) from None
            raise
    finally:
        os.close(folder)
    try:
        st = os.fstat(fd)
        check_kind(shown, st.st_mode)
        if st.st_dev in pseudo_devices():
            raise Refused("not_regular", "pseudo", shown)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def send_file(rid, fd, shown, size, limit):
    """Send the file as DATA_OUT frames then DONE, or FAIL once it is (or grows) past `limit`."""
    total = 0
    while True:
        data = b"" if limit is not None and size > limit else os.read(fd, CHUNK)
        total += len(data)
        if limit is not None and max(total, size) > limit:
            fail(rid, "too_large", "%s is %d bytes, over the cap of %d" % (
                shown, max(total, size), limit))
            return
        if not data:
            send_json(DONE, rid, {"size": total})
            return
        send(DATA_OUT, rid, data)


def run_read(rid, req):
    path, limit = req["path"], req.get("max_bytes")
    try:
        fd, size = open_regular(path.encode("utf-8", "surrogateescape"), path)
    except Refused as exc:
        send_json(FAIL, rid, {"error": exc.error, "what": exc.what, "message": str(exc)})
        return
    except OSError as exc:
        fail(rid, os_error_kind(exc), "%s: %s" % (path, exc.strerror or exc))
        return
    try:
        send_file(rid, fd, path, size, limit)
    except OSError as exc:
        fail(rid, os_error_kind(exc), "%s: %s" % (path, exc.strerror or exc))
    finally:
        os.close(fd)


def run_walk(rid, req):
    # Bytes throughout: names that are not valid UTF-8 travel as lone surrogates (JSON escapes
    # them), whatever the container's locale, and the host refuses them by name.
    root, entries = req["root"].encode("utf-8", "surrogateescape"), []
    try:
        walk = os.walk(root) if stat.S_ISDIR(os.lstat(root).st_mode) else ()  # not via a link
    except OSError:
        walk = ()
    for folder, dirs, files in walk:
        for name in dirs + files:
            full = os.path.join(folder, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            kind = "f" if stat.S_ISREG(st.st_mode) else (
                "d" if stat.S_ISDIR(st.st_mode) else ("l" if stat.S_ISLNK(st.st_mode) else "o"))
            relative = os.path.relpath(full, root).decode("utf-8", "surrogateescape")
            entries.append([relative, kind, st.st_size])
            if len(entries) >= MAX_WALK_ENTRIES:
                send_json(DONE, rid, {"entries": entries, "truncated": True})
                return
    send_json(DONE, rid, {"entries": entries})
