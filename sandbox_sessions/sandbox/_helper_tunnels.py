# The helper's tunnels (see `_helper.py`): a loopback listener inside the container whose
# connections are carried to the host over the channel. Runs in the container: python3 >=
# 3.6, standard library only.
#
# A `listen` request (id L) binds 127.0.0.1:<port> (0: any free port) and answers LISTENING
# {"port": p}. Each accepted connection gets a stream id S of the helper's own (high bit set,
# so never one of the host's request ids), announced by an ACCEPT frame on L whose payload is
# S (u32). On S, then:
#   helper -> host: DATA_OUT (bytes the client sent), END_OUT (the client sent its last byte),
#                   ACK (n DATA_IN frames written to the client), DONE (the socket is closed).
#   host -> helper: DATA_IN (bytes for the client), ACK_IN (n DATA_OUT frames consumed),
#                   END_IN (close once what is queued is written), SHUT_IN (shut the socket's
#                   writing side once what is queued is written, and go on relaying what the
#                   client sends: a CLI's stdin ends, its stdout goes on), CANCEL (close now).
# Both directions are windowed (WINDOW frames unacknowledged), so neither side buffers more
# than WINDOW * CHUNK bytes of a connection, whoever stops reading. CANCEL on L closes the
# listener and every connection it accepted, then answers DONE on L.
#
# A `connect` request (id C) is the other way round: the helper connects to 127.0.0.1:<port>
# inside the container (a server there, such as `opencode serve`), announces the connection's
# stream S by an ACCEPT frame on C, then answers DONE on C. S then works as above.
import queue
import select
import socket
import struct
import threading
import time

from _helper_frames import (
    ACK,
    DATA_OUT,
    DONE,
    BadRequest,
    fail,
    field,
    send,
    send_json,
)

LISTENING, ACCEPT, END_OUT = 17, 18, 19  # helper -> host
ACK_IN, SHUT_IN = 5, 6  # host -> helper
HALF_CLOSE = object()  # queued by SHUT_IN
WINDOW = 8  # frames a side may send ahead of the other's acknowledgements
TUNNEL_CHUNK = 64 * 1024
MAX_CONNECTIONS = 32  # per listener; more are accepted and closed at once
LINGER = 2.0  # after END_IN: seconds the client's late bytes are read and dropped
STREAM_BIT = 0x80000000
U32 = struct.Struct(">I")

listeners = {}  # request id -> Listener
tunnels = {}  # stream id -> Tunnel
_ids_lock = threading.Lock()
_next_stream = [0]


def new_stream_id():
    with _ids_lock:
        _next_stream[0] = (_next_stream[0] + 1) & 0x7FFFFFFF
        return STREAM_BIT | _next_stream[0]


class Tunnel(object):
    """One accepted connection: a reader thread (client -> host) and a writer thread (host ->
    client). The last of the two to end closes the socket and says DONE."""

    def __init__(self, sid, sock, listener):
        self.sid, self.sock, self.listener = sid, sock, listener
        self.chunks = queue.Queue()
        self.cond = threading.Condition()
        self.unacked = 0  # DATA_OUT frames the host has not consumed yet
        self.host_done = False  # END_IN written: the client's bytes are dropped from now on
        self.cancelled = False
        self.alive = 2

    def start(self):
        for target in (self.read_loop, self.write_loop):
            threading.Thread(target=self.guard, args=(target,), daemon=True).start()

    def guard(self, target):
        try:
            target()
        except Exception:
            self.abort()
        finally:
            self.ended()

    def ended(self):
        with self.cond:
            self.alive -= 1
            last = self.alive == 0
        if last:
            try:
                self.sock.close()
            finally:
                tunnels.pop(self.sid, None)
                if self.listener is not None:
                    self.listener.connections.discard(self)
                send_json(DONE, self.sid, {})

    def abort(self):
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv or sendall
        except OSError:
            pass
        self.chunks.put(None)

    def read_loop(self):
        linger_until = None
        while not self.cancelled:
            if self.host_done and linger_until is None:
                linger_until = time.monotonic() + LINGER
            if linger_until is not None and time.monotonic() >= linger_until:
                return
            if not select.select([self.sock], [], [], 0.2)[0]:
                continue
            try:
                data = self.sock.recv(TUNNEL_CHUNK)
            except OSError:
                data = b""
            if not data:
                if not self.host_done:
                    send(END_OUT, self.sid)
                return
            if not self.host_done and self.wait_for_room():
                send(DATA_OUT, self.sid, data)

    def wait_for_room(self):
        with self.cond:
            while self.unacked >= WINDOW and not (self.cancelled or self.host_done):
                self.cond.wait(0.5)
            if self.cancelled or self.host_done:
                return False
            self.unacked += 1
            return True

    def acked(self, count):
        with self.cond:
            self.unacked = max(0, self.unacked - count)
            self.cond.notify_all()

    def write_loop(self):
        while True:
            chunk = self.chunks.get()
            if chunk is HALF_CLOSE and not self.cancelled:
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return  # the read loop relays the client's bytes until it ends
            if chunk is None or chunk is HALF_CLOSE or self.cancelled:
                break
            try:
                self.sock.sendall(chunk)
            except OSError:
                self.abort()
                break
            send(ACK, self.sid, b"1")
        if not self.cancelled:
            # Half-close: the client reads the answer to its end, while its late bytes
            # (a body we refused) are drained for LINGER seconds, so it sees no reset.
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        with self.cond:
            self.host_done = True
            self.cond.notify_all()


class Listener(object):
    def __init__(self, rid, sock):
        self.rid, self.sock = rid, sock
        self.connections = set()
        self.closed = False

    def serve(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.closed:
                    break
                time.sleep(0.05)  # EMFILE and the like: try again, do not spin
                continue
            if self.closed or len(self.connections) >= MAX_CONNECTIONS:
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tunnel = Tunnel(new_stream_id(), conn, self)
            self.connections.add(tunnel)
            tunnels[tunnel.sid] = tunnel  # before the host hears of it and may send to it
            send(ACCEPT, self.rid, U32.pack(tunnel.sid))
            try:
                tunnel.start()
            except RuntimeError:  # no thread left: refuse this one
                tunnels.pop(tunnel.sid, None)
                self.connections.discard(tunnel)
                conn.close()

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        except OSError:
            pass
        for tunnel in list(self.connections):
            tunnel.abort()


def run_listen(rid, req):
    port = field(req, "port", (int,), 0)
    if not 0 <= port <= 65535:
        raise BadRequest("port must be within 0 and 65535, not %r" % port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        fail(rid, "os_error", "cannot listen on 127.0.0.1:%d: %s" % (port, exc.strerror or exc))
        return
    listener = listeners[rid] = Listener(rid, sock)
    send_json(LISTENING, rid, {"port": sock.getsockname()[1]})
    try:
        listener.serve()
    finally:
        listeners.pop(rid, None)
        listener.close()
        sock.close()
        send_json(DONE, rid, {})


CONNECT_TIMEOUT = 10.0


def run_connect(rid, req):
    port = field(req, "port", (int,), 0)
    if not 1 <= port <= 65535:
        raise BadRequest("port must be within 1 and 65535, not %r" % port)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        fail(rid, "os_error", "cannot connect to 127.0.0.1:%d: %s"
             % (port, getattr(exc, "strerror", None) or exc))
        return
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tunnel = Tunnel(new_stream_id(), sock, None)
    tunnels[tunnel.sid] = tunnel  # before the host hears of it and may send to it
    send(ACCEPT, rid, U32.pack(tunnel.sid))
    try:
        tunnel.start()
    except RuntimeError:  # no thread left
        tunnels.pop(tunnel.sid, None)
        sock.close()
        send_json(DONE, tunnel.sid, {})
    send_json(DONE, rid, {})


def on_tunnel_data(sid, payload):
    tunnel = tunnels.get(sid)
    if tunnel is not None:
        tunnel.chunks.put(payload)


def on_tunnel_ack(sid, payload):
    tunnel = tunnels.get(sid)
    if tunnel is not None and payload.isdigit():
        tunnel.acked(int(payload))


def finish_tunnel(sid):
    tunnel = tunnels.get(sid)
    if tunnel is not None:
        tunnel.chunks.put(None)


def shut_tunnel(sid):
    tunnel = tunnels.get(sid)
    if tunnel is not None:
        tunnel.chunks.put(HALF_CLOSE)


def cancel_tunnel(rid):
    """CANCEL of a listener (closes it and its connections) or of one connection."""
    listener = listeners.get(rid)
    if listener is not None:
        listener.close()
    tunnel = tunnels.get(rid)
    if tunnel is not None:
        tunnel.abort()
