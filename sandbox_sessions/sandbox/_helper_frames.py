# The helper's frames and answers (see `_helper.py`). Runs in the container: python3 >= 3.6,
# standard library only.
#
# Frames, both ways: a 9-byte header (kind: u8, request id: u32, length: u32, big-endian) and
# `length` bytes of payload. Requests are JSON; data travels as raw bytes.
import errno
import json
import os
import struct
import threading

HEADER = struct.Struct(">BII")
# host -> helper
REQ, DATA_IN, END_IN, CANCEL = 1, 2, 3, 4
# helper -> host; ACK: one DATA_IN frame of an upload is written, the host may send another
OUT, ERR, DATA_OUT, DONE, FAIL, HELLO, ACK = 10, 11, 12, 13, 14, 15, 16
CHUNK = 256 * 1024
MAX_FRAME = 16 * 1024 * 1024  # a longer frame is skipped and refused, never buffered

_write_lock = threading.Lock()
host_gone = threading.Event()


class BadRequest(Exception):
    """A request the host should never have sent: answered with a `bad_request` FAIL."""


def send(kind, rid, payload=b""):
    frame = HEADER.pack(kind, rid, len(payload)) + payload
    with _write_lock:
        if host_gone.is_set():
            return
        view = memoryview(frame)
        try:
            while view:
                view = view[os.write(1, view):]
        except OSError:  # the host went away; what is left to say has no reader
            host_gone.set()


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
