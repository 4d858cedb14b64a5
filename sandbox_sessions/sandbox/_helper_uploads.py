# The helper's uploads (see `_helper.py`). Runs in the container: python3 >= 3.6, standard
# library only.
import os
import queue

from _helper_frames import (
    ACK,
    DONE,
    BadRequest,
    fail,
    field,
    os_error_kind,
    path_field,
    send,
    send_json,
    start_thread,
)

uploads = {}  # request id -> Upload, until its END_IN or CANCEL
ACK_EVERY = 4  # frames written before an ACK is sent even while more are queued
CANCELLED = object()  # queued for an upload the host gave up on


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
    upload = uploads[rid] = Upload(path, mode)
    if not start_thread(rid, run_upload, rid, upload):
        uploads.pop(rid, None)


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
    size = written = 0
    while True:
        chunk = upload.chunks.get()
        if chunk is None or chunk is CANCELLED:
            return None if chunk is CANCELLED else size
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        size += len(chunk)
        written += 1
        # One ACK for several frames (its payload says how many): fewer frames both ways,
        # and the host still never gets further ahead than its window.
        if written >= ACK_EVERY or upload.chunks.empty():
            send(ACK, rid, str(written).encode())
            written = 0


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
        if uploads.get(rid) is upload:  # failed before its end: drop what still comes
            uploads.pop(rid, None)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    send_json(DONE, rid, {"size": size})


def on_data(rid, payload):
    upload = uploads.get(rid)
    if upload is not None and not upload.closed:
        upload.chunks.put(payload)


def finish_upload(rid):
    upload = uploads.pop(rid, None)
    if upload is not None:
        upload.chunks.put(None)


def cancel_upload(rid):
    upload = uploads.pop(rid, None)
    if upload is not None:
        upload.chunks.put(CANCELLED)
