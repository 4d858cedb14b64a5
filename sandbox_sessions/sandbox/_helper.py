# The in-container helper. The host starts it once per connection with `python3 -c <this file>`
# over an attached `docker exec` (or, in our image, as the container's main process) and speaks
# to it on its stdin and stdout; it is never imported on the host. It must run on any python3
# from 3.6 on, with the standard library only.
#
# Frames, both ways: a 9-byte header (kind: u8, request id: u32, length: u32, big-endian) and
# `length` bytes of payload. Requests are JSON; data travels as raw bytes. Requests are served
# concurrently, one thread each, so a long command never blocks a file read, and the main loop
# only reads frames and hands them on: no request's I/O ever blocks it. A malformed frame or
# request is answered with a FAIL frame; nothing a request does ends the helper.
#
# In our image the helper is the container's PID 1. The kernel then delivers it no signal from
# inside the container unless it installed a handler (it installs none), so the sandbox user can
# neither `kill -9 1` nor `kill -9 -1` it; it must in turn reap every orphan, as an init does.
import errno
import json
import math
import os
import queue
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
# helper -> host; ACK: one DATA_IN frame of an upload is written, the host may send another
OUT, ERR, DATA_OUT, DONE, FAIL, HELLO, ACK = 10, 11, 12, 13, 14, 15, 16
CHUNK = 256 * 1024
MAX_FRAME = 16 * 1024 * 1024  # a longer frame is skipped and refused, never buffered
DRAIN_IDLE = 0.05  # once a command has exited, how long its leftover children may stay silent
KILL_FOR = 1.0  # seconds a timed-out group is killed again and again until it is empty
PIPE_GRACE = 1.0  # after the kill, how long a process outside the group may hold the pipes
COMMAND_OOM_SCORE_ADJ = b"500"  # the OOM killer takes a command before the helper

_write_lock = threading.Lock()
_host_gone = threading.Event()
_running = {}  # request id -> Popen (None until spawned), for CANCEL and clean-up at EOF
_cancelled = set()  # of commands in `_running`
_uploads = {}  # request id -> Upload, until its END_IN or CANCEL
SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


class BadRequest(Exception):
    """A request the host should never have sent: answered with a `bad_request` FAIL."""


def send(kind, rid, payload=b""):
    frame = HEADER.pack(kind, rid, len(payload)) + payload
    with _write_lock:
        if _host_gone.is_set():
            return
        view = memoryview(frame)
        try:
            while view:
                view = view[os.write(1, view):]
        except OSError:  # the host went away; what is left to say has no reader
            _host_gone.set()


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
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "no_space"
    return "os_error"


def field(req, name, kinds, default=None):
    """`req[name]`, or `default` when absent or null; BadRequest when it has another type
    (a bool is never taken for a number)."""
    value = req.get(name)
    if value is None:
        return default
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise BadRequest("%s must be %s, not %r" % (
            name, " or ".join(kind.__name__ for kind in kinds), value))
    return value


def path_field(req, name, optional=False):
    value = field(req, name, (str,))
    if value is None and optional:
        return None
    if not value or "\0" in value:
        raise BadRequest("%s must be a non-empty string without NUL, not %r" % (name, value))
    return value


# --- children: one reaper for all ----------------------------------------------------------


class Reaper(object):
    """Reaps every child, and as PID 1 every orphan too, and hands exit statuses on.

    Nothing else may wait for a child (no `Popen.wait`/`poll`): a pid the reaper already
    reaped could be reused by another process by then. `spawn` registers the pid under the
    lock that the reaper takes before handing a status on, so a child that exits at once is
    not lost.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.waiters = {}  # pid -> Exit
        self.spawned = threading.Event()

    def spawn(self, argv, **options):
        with self.lock:
            proc = subprocess.Popen(argv, **options)
            done = self.waiters[proc.pid] = Exit()
        self.spawned.set()
        return proc, done

    def run(self):
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                # No child now; as PID 1 an orphan may become ours at any moment.
                self.spawned.wait(0.5)
                self.spawned.clear()
                continue
            with self.lock:
                done = self.waiters.pop(pid, None)
            if done is not None:
                done.set(status)


class Exit(object):
    """The exit status of one child, once the reaper has it."""

    def __init__(self):
        self.event = threading.Event()
        self.code = None

    def set(self, status):
        self.code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else (
            os.WEXITSTATUS(status))
        self.event.set()


REAPER = Reaper()


# --- commands ------------------------------------------------------------------------------


def kill_group(pgid):
    """SIGKILL the group again and again until it is empty, for at most KILL_FOR seconds: a
    dying fork bomb keeps forking. Its zombies leave the group once the reaper (ours, or the
    container's init) has them. A process that left the group (`setsid`) is out of reach."""
    end = time.monotonic() + KILL_FOR
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:  # ESRCH: the group is empty
            return
        if time.monotonic() >= end:
            return
        time.sleep(0.01)


def prefer_for_oom(pid):
    # The sandbox user may lower it back to 0, never below the helper's own score.
    try:
        fd = os.open("/proc/%d/oom_score_adj" % pid, os.O_WRONLY)
        try:
            os.write(fd, COMMAND_OOM_SCORE_ADJ)
        finally:
            os.close(fd)
    except OSError:
        pass


def exec_env(req):
    env = dict(os.environ)
    for key, value in field(req, "env", (dict,), {}).items():
        if not isinstance(value, str) or not key or "=" in key or "\0" in key + value:
            raise BadRequest("env entry %r=%r is not usable" % (key, value))
        env[key] = value
    return env


def exec_limits(req):
    timeout = field(req, "timeout", (int, float))
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise BadRequest("timeout must be a finite number of seconds >= 0, not %r" % timeout)
    cap = field(req, "max_output", (int,), 1 << 20)
    if cap < 0:
        raise BadRequest("max_output must be >= 0, not %r" % cap)
    return timeout, cap


def pump(rid, proc, done, deadline, cap):
    """Forward the command's output, at most `cap` bytes a stream, until it has exited and its
    pipes closed (or stayed quiet for DRAIN_IDLE). Past `deadline`, or once cancelled, kill its
    group. Returns (timed_out, truncated)."""
    sel = selectors.DefaultSelector()
    sent = {OUT: 0, ERR: 0}
    sel.register(proc.stdout, selectors.EVENT_READ, OUT)
    sel.register(proc.stderr, selectors.EVENT_READ, ERR)
    truncated = timed_out = False
    stop_at = idle_since = None
    try:
        while True:
            now = time.monotonic()
            late = deadline is not None and now >= deadline
            if stop_at is None and (rid in _cancelled or late):
                timed_out = rid not in _cancelled
                kill_group(proc.pid)
                stop_at = time.monotonic() + PIPE_GRACE
            elif stop_at is not None and now >= stop_at:
                break  # something outside the group holds the pipes open
            tick = 0.05 if deadline is None or stop_at else max(0.0, min(0.05, deadline - now))
            if not sel.get_map():  # both pipes closed: only the exit is left to wait for
                if done.event.wait(tick):
                    break
                continue
            events = sel.select(tick)
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
            elif done.event.is_set():
                # The command exited but a child of it still holds a pipe: stop once it is quiet.
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= DRAIN_IDLE:
                    break
    finally:
        sel.close()
    return timed_out, truncated


def run_exec(rid, req):
    try:
        exec_command(rid, req)
    finally:
        _running.pop(rid, None)
        _cancelled.discard(rid)


def exec_command(rid, req):
    cmd = field(req, "cmd", (str,))
    if cmd is None:
        raise BadRequest("cmd is missing")
    cwd, env = path_field(req, "cwd", optional=True), exec_env(req)
    timeout, cap = exec_limits(req)
    if rid in _cancelled:  # cancelled before it began (sent to a paused container, say)
        return
    started = time.monotonic()
    try:
        proc, done = REAPER.spawn(
            [SHELL, "-c", cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=cwd, env=env, start_new_session=True)
    except OSError as exc:
        fail(rid, os_error_kind(exc), "cannot start command: %s" % exc)
        return
    except ValueError as exc:  # a NUL in the command or its environment
        raise BadRequest(str(exc)) from None
    prefer_for_oom(proc.pid)
    _running[rid] = proc
    try:
        timed_out, truncated = pump(rid, proc, done, None if timeout is None
                                    else started + timeout, cap)
    except BaseException:
        kill_group(proc.pid)
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    done.event.wait(KILL_FOR)
    code = 128 + signal.SIGKILL if done.code is None else done.code
    proc.returncode = code  # so that Popen never waits for a pid the reaper may have reused
    cancelled = rid in _cancelled
    send_json(DONE, rid, {
        "exit_code": 124 if timed_out else code, "timed_out": timed_out,
        "truncated": truncated, "cancelled": cancelled,
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


# --- uploads -------------------------------------------------------------------------------

CANCELLED = object()


class Upload(object):
    """A file being written by its own thread. The main loop queues each DATA_IN frame and
    moves on; the host sends more only as ACKs come back (a window of frames), so the queue
    stays short and a slow disk or a stuck file holds up this upload only."""

    def __init__(self, path, mode):
        self.path, self.mode = path, mode
        self.chunks = queue.Queue()
        self.closed = False


def start_upload(rid, req):
    path, mode = path_field(req, "path"), field(req, "mode", (int,))
    if mode is not None and not 0 <= mode <= 0o7777:
        raise BadRequest("mode must be within 0o0 and 0o7777, not %r" % mode)
    upload = _uploads[rid] = Upload(path, mode)
    if not start_thread(rid, run_upload, rid, upload):
        _uploads.pop(rid, None)


def open_temporary(path):
    """A new, unpredictable file beside `path`: created here (O_EXCL), never through a link
    or into a FIFO someone planted."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    name = ".%s.%s.part" % (os.path.basename(path)[:200], os.urandom(8).hex())
    tmp = os.path.join(folder, name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return tmp, os.open(tmp, flags, 0o666)


def write_chunks(rid, upload, fd):
    """Write the queued chunks until the end (their size) or a cancel (None)."""
    size = 0
    while True:
        chunk = upload.chunks.get()
        if chunk is None or chunk is CANCELLED:
            return None if chunk is CANCELLED else size
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        size += len(chunk)
        send(ACK, rid)


def run_upload(rid, upload):
    tmp = None
    try:
        tmp, fd = open_temporary(upload.path)
        try:
            size = write_chunks(rid, upload, fd)
            if size is not None and upload.mode is not None:
                os.fchmod(fd, upload.mode)
        finally:
            os.close(fd)
        if size is None:
            return  # cancelled: the host no longer listens
        os.replace(tmp, upload.path)
        tmp = None
    except OSError as exc:
        fail(rid, os_error_kind(exc), "%s: %s" % (upload.path, exc.strerror or exc))
        return
    finally:
        upload.closed = True
        if _uploads.get(rid) is upload:  # failed before its end: drop what still comes
            _uploads.pop(rid, None)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    send_json(DONE, rid, {"size": size})


def on_data(rid, payload):
    upload = _uploads.get(rid)
    if upload is not None and not upload.closed:
        upload.chunks.put(payload)


def finish_upload(rid):
    upload = _uploads.pop(rid, None)
    if upload is not None:
        upload.chunks.put(None)


def cancel(rid):
    upload = _uploads.pop(rid, None)
    if upload is not None:
        upload.chunks.put(CANCELLED)
    if rid not in _running:
        return
    _cancelled.add(rid)  # seen by the command's thread, even one not yet started
    proc = _running.get(rid)
    if proc is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # once here; its thread kills until empty
        except OSError:
            pass


# --- requests ------------------------------------------------------------------------------

HANDLERS = {"exec": run_exec, "read": run_read, "walk": run_walk,
            "ping": lambda rid, req: send_json(DONE, rid, {})}


def guarded(handler, rid, req):
    try:
        handler(rid, req)
    except BadRequest as exc:
        fail(rid, "bad_request", str(exc))
    except Exception as exc:  # the host must always get an answer
        fail(rid, "internal", "%s: %s" % (type(exc).__name__, exc))


def start_thread(rid, handler, *args):
    try:
        threading.Thread(target=guarded, args=(handler, *args), daemon=True).start()
    except RuntimeError as exc:  # no pid (or memory) left for a thread
        fail(rid, "busy", "the sandbox cannot start a thread (%s): too many processes?" % exc)
        return False
    return True


def on_request(rid, payload):
    try:
        req = json.loads(payload.decode("utf-8"))
        if not isinstance(req, dict):
            raise BadRequest("a request must be a JSON object, not %s" % type(req).__name__)
        op = req.get("op")
        if op == "write":
            start_upload(rid, req)
            return
        handler = HANDLERS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise BadRequest("unknown op %r" % (op,))
        if handler is run_exec:
            _running[rid] = None  # so that a cancel coming before its thread runs is kept
        if not start_thread(rid, handler, rid, req):
            _running.pop(rid, None)
    except (BadRequest, ValueError) as exc:  # ValueError: not UTF-8, not JSON
        fail(rid, "bad_request", str(exc))


def on_frame(kind, rid, payload):
    if kind == REQ:
        on_request(rid, payload)
    elif kind == DATA_IN:
        on_data(rid, payload)
    elif kind == END_IN:
        finish_upload(rid)
    elif kind == CANCEL:
        cancel(rid)
    # Any other kind is ignored.


# --- the main loop -------------------------------------------------------------------------


def read_exact(n, keep=True):
    """`n` bytes of stdin (dropped unless `keep`), or None at its end."""
    parts = []
    while n:
        try:
            data = os.read(0, min(n, CHUNK))
        except OSError:
            return None
        if not data:
            return None
        if keep:
            parts.append(data)
        n -= len(data)
    return b"".join(parts)


def serve():
    """Read frames and hand each on, until stdin ends; nothing here waits on a request."""
    while True:
        header = read_exact(HEADER.size)
        if header is None:
            return
        kind, rid, length = HEADER.unpack(header)
        if length > MAX_FRAME:
            if read_exact(length, keep=False) is None:
                return
            cancel(rid)  # an upload missing a chunk must not complete
            fail(rid, "bad_request", "a frame of %d bytes is over the limit" % length)
            continue
        payload = read_exact(length) if length else b""
        if payload is None:
            return
        try:
            on_frame(kind, rid, payload)
        except Exception as exc:  # even MemoryError: answer it, and serve the others
            try:
                fail(rid, "internal", "%s: %s" % (type(exc).__name__, exc))
            except Exception:
                pass


def harden():
    # Python's own SIGINT handler would let `kill -INT 1` end PID 1 with a KeyboardInterrupt;
    # with no handler at all, the kernel drops every signal sent to PID 1 from inside.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes
        # Not dumpable: the sandbox user (our own uid) can then neither ptrace us nor open our
        # /proc/<pid>/mem or /proc/<pid>/fd/1, the host's connection.
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception:
        pass


def main():
    harden()
    threading.Thread(target=REAPER.run, daemon=True).start()
    send_json(HELLO, 0, {"version": 2, "pid": os.getpid(), "python": sys.version.split()[0]})
    try:
        serve()
    finally:
        # The host is gone: leave nothing of ours running.
        for rid in list(_running) + list(_uploads):
            cancel(rid)
    if "main" in sys.argv:
        # We are the container's main process: stay (and reap), so the container and its
        # files live on for the next connection, which comes through `docker exec`. Later
        # output goes nowhere; fd 1 must not be reused by a file that a late frame would hit.
        _host_gone.set()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        while True:
            signal.pause()


main()
