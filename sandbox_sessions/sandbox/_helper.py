# The in-container helper: its main loop. The host starts it once per connection (a short
# `python3 -c` stub reading the program from stdin) over an attached `docker exec`, or, in our
# image, as the container's main process, and speaks to it on its stdin and stdout. It is never
# imported on the host. It must run on any python3 from 3.6 on, with the standard library only.
#
# It is six modules, loaded in order as one program (`_container.helper_source`):
# `_helper_frames` (the frame format, answers, request threads), `_helper_commands` (commands
# and the reaper), `_helper_reads`, `_helper_uploads`, `_helper_tunnels` (loopback listeners
# tunnelled to the host), and this one.
#
# Requests are served concurrently, one thread each, so a long command never blocks a file
# read, and the main loop only reads frames and hands them on: no request's I/O ever blocks
# it. A malformed frame or request is answered with a FAIL frame; nothing a request does ends
# the helper.
#
# In our image the helper is the container's PID 1. The kernel then delivers it no signal from
# inside the container unless it installed a handler (it installs none), so the sandbox user can
# neither `kill -9 1` nor `kill -9 -1` it; it must in turn reap every orphan, as an init does.
import json
import os
import signal
import sys
import threading

from _helper_commands import REAPER, cancel_command, expect, run_exec, running
from _helper_frames import (
    CANCEL,
    CHUNK,
    DATA_IN,
    DONE,
    END_IN,
    HEADER,
    HELLO,
    MAX_FRAME,
    REQ,
    BadRequest,
    fail,
    host_gone,
    send_json,
    start_thread,
)
from _helper_reads import run_read, run_walk
from _helper_tunnels import (
    ACK_IN,
    SHUT_IN,
    STREAM_BIT,
    cancel_tunnel,
    finish_tunnel,
    listeners,
    on_tunnel_ack,
    on_tunnel_data,
    run_connect,
    run_listen,
    shut_tunnel,
)
from _helper_uploads import cancel_upload, finish_upload, on_data, start_upload, uploads


def cancel(rid):
    cancel_upload(rid)
    cancel_command(rid)
    cancel_tunnel(rid)


# --- requests ------------------------------------------------------------------------------

HANDLERS = {"exec": run_exec, "read": run_read, "walk": run_walk, "listen": run_listen,
            "connect": run_connect,
            "ping": lambda rid, req: send_json(DONE, rid, {})}


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
            expect(rid)
        if not start_thread(rid, handler, rid, req):
            running.pop(rid, None)
    except (BadRequest, ValueError) as exc:  # ValueError: not UTF-8, not JSON
        fail(rid, "bad_request", str(exc))


def on_frame(kind, rid, payload):
    if kind == REQ:
        on_request(rid, payload)
    elif rid & STREAM_BIT:  # a tunnelled connection (`_helper_tunnels`)
        if kind == DATA_IN:
            on_tunnel_data(rid, payload)
        elif kind == ACK_IN:
            on_tunnel_ack(rid, payload)
        elif kind == END_IN:
            finish_tunnel(rid)
        elif kind == SHUT_IN:
            shut_tunnel(rid)
        elif kind == CANCEL:
            cancel_tunnel(rid)
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
        for rid in list(running) + list(uploads) + list(listeners):
            cancel(rid)
    if "main" in sys.argv:
        # We are the container's main process: stay (and reap), so the container and its
        # files live on for the next connection, which comes through `docker exec`. Later
        # output goes nowhere; fd 1 must not be reused by a file that a late frame would hit.
        host_gone.set()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        while True:
            signal.pause()


main()
