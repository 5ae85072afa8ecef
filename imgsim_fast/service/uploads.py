"""Bytes into the server: multipart uploads streamed to a temporary file under a size limit, and server-side
paths confined to the operator's roots.

The limit is enforced while the body streams in (a declared Content-Length over it is refused before a byte
is read), so an oversized upload never reaches the disk in full nor the decoder at all. Server-side paths
are resolved (os.path.realpath: every `..` and symlink) and must lie inside an allowed root; the file is then
opened with O_NOFOLLOW and checked again by (device, inode) against what was resolved, so a symlink swapped
in between the check and the open is refused too.
"""
from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass, field

try:
    from python_multipart.multipart import MultipartParser, parse_options_header
except ImportError as e:  # the [service] extra; `imgsim serve` turns this into a one-line error
    raise ImportError("imgsim serve needs the [service] extra: pip install 'imgsim_fast[service]'") from e

__all__ = ["ClientError", "Upload", "receive_upload", "copy_confined", "MAX_FIELD_BYTES"]

# Text fields beside the file (a filter, a name): small by nature.
MAX_FIELD_BYTES = 64 << 10


class ClientError(Exception):
    """A request the client must change: HTTP `status` with a one-line message, sent as JSON."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Upload:
    path: str | None                 # the temporary file holding the `file` part (None when absent)
    size: int = 0
    filename: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


async def receive_upload(request, tmp_dir: str, max_bytes: int) -> Upload:
    """The `file` part of a multipart/form-data request streamed into `tmp_dir` (fsynced), and its text fields."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ClientError(415, "not_multipart", "send the image as multipart/form-data with a part named 'file'")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + MAX_FIELD_BYTES:
        raise ClientError(413, "too_large", f"upload of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    up = Upload(None)
    state = {"name": None, "filename": None, "fd": None, "buf": None, "hname": b"", "headers": {}}

    def on_header_field(data, start, end):
        state["hname"] += data[start:end]

    def on_header_value(data, start, end):
        k = state["hname"].lower()
        state["headers"][k] = state["headers"].get(k, b"") + data[start:end]

    def on_header_end():
        state["hname"] = b""

    def on_headers_finished():
        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = opts.get(b"name", b"").decode("utf-8", "replace")
        fn = opts.get(b"filename")
        state["filename"] = None if fn is None else fn.decode("utf-8", "replace")
        if state["name"] == "file" and state["filename"] is not None:
            if up.path is not None:
                raise ClientError(400, "bad_upload", "send one part named 'file'")
            fd, up.path = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
            state["fd"] = fd
            up.filename = state["filename"]
        else:
            state["buf"] = bytearray()

    def on_part_data(data, start, end):
        n = end - start
        if state["fd"] is not None:
            up.size += n
            if up.size > max_bytes:
                raise ClientError(413, "too_large", f"upload is over the limit of {max_bytes} bytes")
            view = memoryview(data)[start:end]
            while view:
                view = view[os.write(state["fd"], view):]
        else:
            if len(state["buf"]) + n > MAX_FIELD_BYTES:
                raise ClientError(413, "too_large", f"form field {state['name']!r} is over {MAX_FIELD_BYTES} bytes")
            state["buf"] += data[start:end]

    def on_part_end():
        if state["fd"] is not None:
            os.fsync(state["fd"])
            os.close(state["fd"])
            state["fd"] = None
        elif state["buf"] is not None:
            up.fields[state["name"]] = state["buf"].decode("utf-8", "replace")
        state.update(buf=None, headers={}, name=None)

    parser = MultipartParser(params[b"boundary"], {
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ClientError:
        _abort(state, up)
        raise
    except Exception as e:  # python-multipart's own errors: a body that is not the multipart it says
        _abort(state, up)
        raise ClientError(400, "bad_upload", f"malformed multipart body ({type(e).__name__})") from None
    if state["fd"] is not None:  # the body ended inside the file part
        _abort(state, up)
        raise ClientError(400, "bad_upload", "the multipart body ended before the file part did")
    if up.path is None:
        raise ClientError(400, "bad_upload", "no part named 'file' (with a filename) in the upload")
    return up


def _abort(state, up: Upload) -> None:
    if state["fd"] is not None:
        os.close(state["fd"])
        state["fd"] = None
    up.discard()


def copy_confined(path: str, roots: list[str], tmp_dir: str, max_bytes: int) -> tuple[str, str]:
    """(the real path of `path`, a temporary copy of its bytes) when it lies under one of `roots`; else
    ClientError 403. The copy is what gets decoded, so the file cannot change under the extraction."""
    if not roots:
        raise ClientError(403, "paths_disabled", "server-side paths are off (start the server with --allow-root DIR)")
    if not isinstance(path, str) or not path or "\x00" in path or not os.path.isabs(path):
        raise ClientError(400, "bad_path", "path must be an absolute path")
    real = os.path.realpath(path)
    if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        raise ClientError(403, "path_not_allowed", "path is outside the allowed roots")
    try:
        st = os.stat(real)
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ClientError(404, "no_such_file", "no such file under the allowed roots") from None
    except OSError:
        raise ClientError(403, "path_not_allowed", "path cannot be opened (a symlink, or not readable)") from None
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
            raise ClientError(403, "path_not_allowed", "path is not a regular file under the allowed roots")
        if fst.st_size > max_bytes:
            raise ClientError(413, "too_large", f"file of {fst.st_size} bytes is over the limit of {max_bytes} bytes")
        tfd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="path-")
        try:
            copied = 0
            while chunk := os.read(fd, 1 << 20):
                copied += len(chunk)
                if copied > max_bytes:
                    raise ClientError(413, "too_large", f"file is over the limit of {max_bytes} bytes")
                os.write(tfd, chunk)
            os.fsync(tfd)
        except BaseException:
            os.close(tfd)
            os.unlink(tmp)
            raise
        os.close(tfd)
        return real, tmp
    finally:
        os.close(fd)
