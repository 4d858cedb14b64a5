# The in-container helper. The host starts it once per connection with `python3 -c <this file>`
# over an attached `docker exec` and speaks to it on its stdin and stdout; it is never imported
# on the host. It must run on any python3 from 3.6 on, with the standard library only.
#
# Frames, both ways: a 9-byte header (kind: u8, request id: u32, length: u32, big-endian) and
# `length` bytes of payload. Requests are JSON; data travels as raw bytes. Requests are served
# concurrently, one thread each, so a long command never blocks a file read.
import errno
import json
import os
import selectors
import signal
import stat
import struct
import subprocess
import sys
import threading
import time

HEADER = struct.Struct(">BII")
# host -> helper
REQ, DATA_IN, END_IN, CANCEL = 1, 2, 3, 4
# helper -> host
OUT, ERR, DATA_OUT, DONE, FAIL, HELLO = 10, 11, 12, 13, 14, 15
CHUNK = 256 * 1024
DRAIN_IDLE = 0.05  # once a command has exited, how long its leftover children may stay silent

_write_lock = threading.Lock()
_running = {}  # request id -> Popen, for CANCEL and for clean-up at EOF
_cancelled = set()
_uploads = {}  # request id -> (open file, temporary path, final path)
SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


def send(kind, rid, payload=b""):
    frame = HEADER.pack(kind, rid, len(payload)) + payload
    with _write_lock:
        view = memoryview(frame)
        while view:
            view = view[os.write(1, view):]


def send_json(kind, rid, obj):
    send(kind, rid, json.dumps(obj).encode())


def fail(rid, error, message):
    send_json(FAIL, rid, {"error": error, "message": message})


def os_error_kind(exc):
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, IsADirectoryError):
        return "is_directory"
    if isinstance(exc, NotADirectoryError):
        return "not_found"
    if isinstance(exc, PermissionError):
        return "permission"
    return "os_error"


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def pump(rid, proc, deadline, cap):
    """Forward the command's output until both pipes close, capped at `cap` bytes each."""
    sel = selectors.DefaultSelector()
    sent = {OUT: 0, ERR: 0}
    sel.register(proc.stdout, selectors.EVENT_READ, OUT)
    sel.register(proc.stderr, selectors.EVENT_READ, ERR)
    truncated = timed_out = False
    idle_since = None
    while sel.get_map():
        wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
        events = sel.select(wait)
        for key, _ in events:
            data = os.read(key.fd, CHUNK)
            if not data:
                sel.unregister(key.fileobj)
                continue
            room = cap - sent[key.data]
            if len(data) > room:
                truncated = True
                data = data[:max(room, 0)]
            if data:
                sent[key.data] += len(data)
                send(key.data, rid, data)
        if events:
            idle_since = None
        if deadline is not None and not timed_out and time.monotonic() >= deadline:
            timed_out = True
            kill_group(proc)
            deadline = time.monotonic() + 1.0  # grace for the pipes to close
        elif deadline is not None and timed_out and time.monotonic() >= deadline:
            break  # something outside the group holds the pipes open
        if not events and proc.poll() is not None:
            # The command exited but a child of it still holds a pipe: stop once it is quiet.
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= DRAIN_IDLE:
                break
    sel.close()
    return timed_out, truncated


def run_exec(rid, req):
    env = dict(os.environ)
    env.update(req.get("env") or {})
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [SHELL, "-c", req["cmd"]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=req.get("cwd") or None, env=env, start_new_session=True)
    except OSError as exc:
        fail(rid, os_error_kind(exc), "cannot start command: %s" % exc)
        return
    _running[rid] = proc
    timeout = req.get("timeout")
    deadline = None if timeout is None else started + float(timeout)
    try:
        timed_out, truncated = pump(rid, proc, deadline, int(req.get("max_output", 1 << 20)))
        code = proc.wait()
    finally:
        _running.pop(rid, None)
        proc.stdout.close()
        proc.stderr.close()
    cancelled = rid in _cancelled
    _cancelled.discard(rid)
    send_json(DONE, rid, {
        "exit_code": 124 if timed_out else (128 - code if code < 0 else code),
        "timed_out": timed_out, "truncated": truncated, "cancelled": cancelled,
        "duration": time.monotonic() - started})


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
        check_kind(shown, os.stat(parts[-1], dir_fd=folder, follow_symlinks=False).st_mode)
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


def start_upload(rid, req):
    path = req["path"]
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, ".%s.%d.part" % (os.path.basename(path), rid))
    try:
        os.makedirs(folder, exist_ok=True)
        f = open(tmp, "wb")
    except OSError as exc:
        fail(rid, os_error_kind(exc), "%s: %s" % (path, exc.strerror or exc))
        _uploads[rid] = None  # swallow the data frames that follow
        return
    _uploads[rid] = (f, tmp, path, req.get("mode"))


def finish_upload(rid):
    upload = _uploads.pop(rid, None)
    if upload is None:
        return
    f, tmp, path, mode = upload
    try:
        f.close()
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        fail(rid, os_error_kind(exc), "%s: %s" % (path, exc.strerror or exc))
        return
    send_json(DONE, rid, {"size": os.path.getsize(path)})


def cancel(rid):
    _cancelled.add(rid)
    proc = _running.get(rid)
    if proc is not None:
        kill_group(proc)


HANDLERS = {"exec": run_exec, "read": run_read, "walk": run_walk,
            "ping": lambda rid, req: send_json(DONE, rid, {})}


def guarded(handler, rid, req):
    try:
        handler(rid, req)
    except Exception as exc:  # the host must always get an answer
        fail(rid, "internal", "%s: %s" % (type(exc).__name__, exc))


def on_request(rid, req):
    op = req.get("op")
    if op == "write":
        start_upload(rid, req)
        return
    handler = HANDLERS.get(op)
    if handler is None:
        fail(rid, "bad_request", "unknown op %r" % (op,))
        return
    threading.Thread(target=guarded, args=(handler, rid, req), daemon=True).start()


def on_data(rid, payload):
    upload = _uploads.get(rid)
    if upload is not None:
        upload[0].write(payload)


def read_exact(n):
    parts = []
    while n:
        data = os.read(0, min(n, CHUNK))
        if not data:
            return None
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def main():
    send_json(HELLO, 0, {"version": 1, "pid": os.getpid(), "python": sys.version.split()[0]})
    while True:
        header = read_exact(HEADER.size)
        if header is None:
            break
        kind, rid, length = HEADER.unpack(header)
        payload = read_exact(length) if length else b""
        if payload is None:
            break
        if kind == REQ:
            on_request(rid, json.loads(payload.decode()))
        elif kind == DATA_IN:
            on_data(rid, payload)
        elif kind == END_IN:
            finish_upload(rid)
        elif kind == CANCEL:
            cancel(rid)
    # The host is gone: leave nothing of ours running.
    for proc in list(_running.values()):
        kill_group(proc)
    if "main" in sys.argv:
        # We are the container's main process: stay, so the container (and its files) lives
        # on for the next connection, which comes through `docker exec`.
        os.close(1)
        while True:
            signal.pause()


main()
