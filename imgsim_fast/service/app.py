"""The FastAPI app of `imgsim serve`: routes under /v1, API-key dependencies, JSON errors, limits, metrics, the page.

    from imgsim_fast.service.app import create_app
    app = create_app(ServiceConfig("catalog.sqlite", embed_model=None))   # then uvicorn.run(app)

Every error is JSON, {"error": {"code", "message"}}, with a 4xx status for what the client must change; an
unexpected exception is logged here and answered 500 without its traceback.
"""
from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import time
from contextlib import asynccontextmanager

import numpy as np

try:
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
except ImportError as e:  # the [service] extra; `imgsim serve` turns this into a one-line error
    raise ImportError("imgsim serve needs the [service] extra: pip install 'imgsim_fast[service]'") from e

from imgsim_fast.catalog import query as q
from imgsim_fast.catalog.store import Catalog
from imgsim_fast.features.codes import to_hex
from imgsim_fast.io.loading import ImageLoadError, load_image
from imgsim_fast.io.names import path_text
from imgsim_fast.service import models as M
from imgsim_fast.service.config import ServiceConfig
from imgsim_fast.service.ingest import DIHEDRAL_ARRAY, HASH_ARRAY, Extracted, extract
from imgsim_fast.service.keys import KeyStore, keys_path
from imgsim_fast.service.live import LiveIndex
from imgsim_fast.service.metrics import Metrics
from imgsim_fast.service.reader import Reader
from imgsim_fast.service.uploads import ClientError, copy_confined, receive_upload
from imgsim_fast.service.writer import AddJob, DeleteJob, LooksJob, Writer

__all__ = ["create_app", "Service"]

log = logging.getLogger("imgsim.serve")

# A stored file's extension follows its decoded format, never the client's file name.
_EXT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
        "TIFF": ".tif", "HEIF": ".heic", "AVIF": ".avif"}
# ImageLoadError kinds -> (status, code). Over the pixel limit is read from the header, before decoding.
_LOAD_STATUS = {"too_large": (413, "too_many_pixels"), "not_image": (415, "not_an_image"),
                "unsupported": (415, "unsupported_image"), "empty": (400, "empty_file")}
_ERRORS = {400: {"model": M.ErrorOut}, 401: {"model": M.ErrorOut}, 403: {"model": M.ErrorOut},
           404: {"model": M.ErrorOut}, 413: {"model": M.ErrorOut}, 415: {"model": M.ErrorOut},
           422: {"model": M.ErrorOut}}
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"}}}}}}}
_SEARCH_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"},
                   "k": {"type": "integer", "default": 20},
                   "filters": {"type": "string", "description": "Filters as JSON"}}}}}}}


class Service:
    """What the routes share: the configuration, keys, the writer, the readers and the in-memory index."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.keys = KeyStore(keys_path(cfg.catalog))
        self.tmp_dir = os.path.join(cfg.storage, ".incoming")
        shutil.rmtree(self.tmp_dir, ignore_errors=True)  # a killed server's half-received uploads
        os.makedirs(self.tmp_dir, exist_ok=True)
        self.model = self.embedder = None
        dim = None
        self.metrics = Metrics(lambda: self.writer.depth() if self.writer else 0, lambda: len(self.live))
        self.writer = None
        if cfg.embed_model:
            from imgsim_fast.features.embedding import get_model
            from imgsim_fast.features.embedding.models import ModelNotAvailableError
            from imgsim_fast.service.embedder import BatchEmbedder

            try:
                self.model = get_model(cfg.embed_model, "cpu")
            except ModelNotAvailableError as e:
                raise ValueError(str(e)) from None
            dim = self.model.dim
            self.embedder = BatchEmbedder(self.model, cfg.max_batch, self.metrics.embed_batch)
        self.live = LiveIndex(1, dim, dedup_model=self.model.name if self.model else None)
        self.writer = Writer(cfg.catalog, cfg.storage, self.live, model_name=cfg.embed_model,
                             dim=dim, max_batch=cfg.max_batch, metrics=self.metrics)
        self.live.load(self.writer.cat, HASH_ARRAY, DIHEDRAL_ARRAY, self.writer.embed_array)
        self.live.on_looks = lambda checks, verdicts: self.writer.submit(LooksJob(checks, verdicts))
        self.reader = Reader(cfg.catalog)
        self.method = f"embed:{self.model.name}" if self.model else "phash"

    def close(self) -> None:
        self.writer.close()

    # -------------------------------------------------------------------------------------------
    # Work done in threads

    def features_of(self, path: str) -> tuple[Extracted, np.ndarray | None]:
        try:
            f = extract(path, max_pixels=self.cfg.max_pixels, embed_spec=self.model.spec if self.model else None)
        except ImageLoadError as e:
            status, code = _LOAD_STATUS.get(e.kind, (422, "undecodable_image"))
            raise ClientError(status, code, f"the upload is not a usable image: {e.reason}") from None
        vec = None
        if self.embedder is not None:
            # One batch: the search input and dedup's two views (the duplicate test's embeddings).
            out = self.embedder.embed([f.embed_input, *f.dedup[2]])
            if not np.isfinite(out).all():
                raise ClientError(422, "undecodable_image", "the model returned NaN or infinity for this image")
            vec, f.dedup_vectors = out[0], out[1:]
        return f, vec

    def stored_facts(self, fids) -> dict:
        """Keep-best's facts of stored files, read from the catalog (for the groups' keepers)."""
        from imgsim_fast.catalog.dedup_features import stored_facts

        with Catalog(self.cfg.catalog) as cat:
            return stored_facts(cat, fids)

    def near_out(self, near) -> tuple[list[dict], list[dict]]:
        recs = self.reader.get_many([n.file_id for n in near])
        dup, sim = [], []
        for n in near:
            r = recs.get(n.file_id)
            if r is None:  # deleted meanwhile
                continue
            (dup if n.match.duplicate else sim).append(_near(n.file_id, r.path, n.match))
        return dup, sim

    def image_out(self, rec, codes8=None) -> dict:
        if codes8 is None:
            row = self.live.row_of.get(rec.id)
            codes8 = None if row is None else self.live.codes8[row]
        hashes = {} if codes8 is None else {"phash": to_hex(np.asarray(codes8)[:1])[0]}
        camera = " ".join(x for x in (rec.make, rec.model) if x) or None
        return dict(id=rec.id, path=path_text(rec.path), digest=rec.digest, size=rec.size, width=rec.width,
                    height=rec.height, format=rec.format, taken=rec.taken, camera=camera,
                    description=rec.description, tags=self.reader.tags(rec.id), hashes=hashes)


def _near(fid: int, path: str, m) -> dict:
    tier = "keeper" if m.rule == "keeper" else ("duplicate" if m.duplicate else "similar")
    return dict(id=fid, path=path_text(path), tier=tier, rule=m.rule, description=m.describe(),
                phash_distance=m.phash, flip_distance=m.dihedral, transform=m.transform,
                cosine=None if m.cos is None else round(float(m.cos), 4))


def _filter_expr(f: M.Filters | None):
    if f is None:
        return None
    parts = [q.Tag(t) for t in f.tags]
    if f.any_tags:
        parts.append(q.AnyTag(tuple(f.any_tags)))
    if f.text:
        parts.append(q.Text(f.text))
    if f.after:
        parts.append(q.Field("taken", ">=", f.after))
    if f.before:
        parts.append(q.Field("taken", "<", f.before))
    if f.camera:
        parts.append(q.Field("camera", "contains", f.camera))
    for name, v in f.where.items():
        parts.append(q.Range(name, v.min, v.max) if isinstance(v, M.Span) else q.Field(name, "=", v))
    expr = q.And(tuple(parts)) if parts else None
    try:
        q.compile_expr(expr)  # unknown fields and bad operators fail here, as a 422
    except (ValueError, TypeError) as e:
        raise ClientError(422, "bad_filter", str(e)) from None
    return expr


def _token(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def require(scope: str):
    """A dependency: the request carries a live key with `scope`, or the operator allowed it without one."""

    def check(request: Request):
        svc: Service = request.app.state.svc
        token = _token(request)
        if token is None:
            cfg = svc.cfg
            if cfg.allow_anonymous_writes or (scope == "read" and cfg.allow_anonymous_reads):
                return None
            raise ClientError(401, "no_key", "this endpoint needs an API key: send it as X-API-Key or "
                                             "Authorization: Bearer (create one with `imgsim serve keys add`)")
        key = svc.keys.check(token)
        if key is None:
            raise ClientError(401, "bad_key", "unknown or revoked API key")
        if scope not in key.scopes:
            raise ClientError(403, "scope", f"this key lacks the {scope!r} scope")
        return key

    return Depends(check)


def _error(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def create_app(cfg: ServiceConfig) -> FastAPI:
    """The app over `cfg.catalog`. Opens the catalog for writing (one server per catalog) and loads the
    in-memory index before returning, so a locked or damaged catalog fails here, not at the first request."""
    svc = Service(cfg)

    @asynccontextmanager
    async def lifespan(app):
        if cfg.threads:
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = cfg.threads
        yield
        svc.close()

    app = FastAPI(title="imgsim", version="1", lifespan=lifespan,
                  description="Exact and near-duplicate detection and similarity search over an imgsim catalog.")
    app.state.svc = svc
    here = os.path.dirname(os.path.abspath(__file__))
    app.mount("/static", StaticFiles(directory=os.path.join(here, "static")), name="static")

    @app.exception_handler(ClientError)
    async def _client_error(request, e: ClientError):
        return _error(e.status, e.code, e.message)

    # Routing's own errors (no such route, a method the route lacks), as JSON like every other error.
    @app.exception_handler(404)
    async def _not_found(request, e):
        return _error(404, "not_found", str(getattr(e, "detail", "Not Found")))

    @app.exception_handler(405)
    async def _bad_method(request, e):
        return _error(405, "method_not_allowed", str(getattr(e, "detail", "Method Not Allowed")))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errs = e.errors()
        if any(x.get("type") == "json_invalid" for x in errs):
            return _error(400, "malformed_json", "the request body is not valid JSON")
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, "invalid_request", f"{where + ': ' if where else ''}{first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(request, e):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal error (logged on the server)")

    @app.middleware("http")
    async def _limits_and_metrics(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            response = await asyncio.wait_for(call_next(request), cfg.request_timeout_s)
        except asyncio.TimeoutError:
            response = _error(504, "timeout", f"the request took longer than {cfg.request_timeout_s:g} s")
        route = request.scope.get("route")
        svc.metrics.observe(request.method, getattr(route, "path", "unmatched"), response.status_code,
                            time.perf_counter() - t0)
        return response

    # -------------------------------------------------------------------------------------------
    # Operations

    @app.get("/v1/health", response_model=M.Health, tags=["ops"])
    def health():
        return M.Health(status="ok")

    @app.get("/v1/ready", response_model=M.Health, tags=["ops"], responses={503: {"model": M.ErrorOut}})
    def ready():
        if not svc.writer.alive():
            raise ClientError(503, "not_ready", "the writer stopped")
        return M.Health(status="ready", files=len(svc.live), embedding=svc.model.name if svc.model else None,
                        text_search=bool(svc.embedder and svc.embedder.has_text),
                        without_dedup_features=svc.live.missing_dedup)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics():
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    # -------------------------------------------------------------------------------------------
    # Adding and checking

    async def _add(job: AddJob, f: Extracted, vec):
        fid, created, stored = await asyncio.wrap_future(svc.writer.submit(job))
        near = await run_in_threadpool(svc.live.near, f, fid, stored)  # stored: the file the detail check reads
        dup, sim = await run_in_threadpool(svc.near_out, near)
        rec = await run_in_threadpool(svc.reader.get, fid)
        if rec is None:
            raise ClientError(404, "not_found", "the image was deleted while it was being added")
        return {"image": svc.image_out(rec, f.codes8), "created": created, "duplicates": dup, "similar": sim}

    @app.post("/v1/images", response_model=M.AddOut, tags=["images"], responses=_ERRORS,
              openapi_extra=_UPLOAD_BODY, dependencies=[require("write")])
    async def add_image(request: Request):
        """Store an uploaded image; answer its id, hashes, and the duplicates and look-alikes already stored."""
        up = await receive_upload(request, svc.tmp_dir, cfg.max_upload_bytes)
        try:
            f, vec = await run_in_threadpool(svc.features_of, up.path)
            return await _add(AddJob(up.path, f, vec, ext=_EXT.get(f.metadata.format or "", ".img")), f, vec)
        finally:
            up.discard()

    @app.post("/v1/images/from-path", response_model=M.AddOut, tags=["images"], responses=_ERRORS,
              dependencies=[require("write")])
    async def add_path(body: M.PathRequest):
        """Index a file the server can read, under one of its --allow-root folders (not copied)."""
        real, tmp = await run_in_threadpool(copy_confined, body.path, cfg.allow_roots, svc.tmp_dir,
                                            cfg.max_upload_bytes)
        try:
            f, vec = await run_in_threadpool(svc.features_of, tmp)
            f.st = os.stat(real)
            return await _add(AddJob(tmp, f, vec, source_path=real), f, vec)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    @app.post("/v1/check", response_model=M.CheckOut, tags=["images"], responses=_ERRORS,
              openapi_extra=_UPLOAD_BODY, dependencies=[require("read")])
    async def check_image(request: Request):
        """The ingest-time question, without storing anything: is this image, or something near it, here?"""
        up = await receive_upload(request, svc.tmp_dir, cfg.max_upload_bytes)
        try:
            f, vec = await run_in_threadpool(svc.features_of, up.path)
            near = await run_in_threadpool(svc.live.near, f, None)  # the upload kept for the detail check
        finally:
            up.discard()
        dup, sim = await run_in_threadpool(svc.near_out, near)
        md = f.metadata
        return {"digest": f.digest, "width": md.width, "height": md.height, "format": md.format,
                "hashes": {"phash": to_hex(f.codes8[:1])[0]}, "duplicates": dup, "similar": sim}

    # -------------------------------------------------------------------------------------------
    # Search

    def _hits(ranked) -> list[dict]:
        recs = svc.reader.get_many([fid for fid, _, _ in ranked])
        out = []
        for fid, score, dist in ranked:
            r = recs.get(fid)
            if r is not None:
                out.append(dict(rank=len(out) + 1, id=fid, path=path_text(r.path), score=score, distance=dist))
        return out

    def _rank(code, vec, k, filters, exclude=None):
        allowed = svc.reader.allowed(_filter_expr(filters))
        allowed = None if allowed is None else np.asarray(allowed, np.int64)
        ranked = svc.live.rank(code=code, vector=vec, k=k, allowed=allowed, exclude=exclude)
        return {"method": svc.method if vec is not None else "phash", "hits": _hits(ranked)}

    @app.post("/v1/search", response_model=M.SearchOut, tags=["search"], responses=_ERRORS,
              dependencies=[require("read")])
    def search(body: M.SearchRequest):
        """Similar images to a stored one (`id`), or to a text (`text`; needs a CLIP model), filtered first."""
        if body.text is not None:
            if not (svc.embedder and svc.embedder.has_text):
                raise ClientError(400, "no_text_search", "text search needs a CLIP model: start the server with "
                                                         "--embed CLIP_MODEL")
            return _rank(None, svc.embedder.embed_text(body.text), body.k, body.filters)
        row = svc.live.row_of.get(body.id)
        if row is None:
            raise ClientError(404, "not_found", f"no image with id {body.id}")
        vec = None
        if svc.live.emb is not None and np.abs(svc.live.emb[row]).sum() > 0:
            vec = svc.live.emb[row].copy()
        return _rank(svc.live.codes[row].copy(), vec, body.k, body.filters, exclude=body.id)

    @app.post("/v1/search/upload", response_model=M.SearchOut, tags=["search"], responses=_ERRORS,
              openapi_extra=_SEARCH_UPLOAD_BODY, dependencies=[require("read")])
    async def search_upload(request: Request):
        """Similar images to an uploaded one (not stored). Form fields: k, filters (JSON)."""
        up = await receive_upload(request, svc.tmp_dir, cfg.max_upload_bytes)
        try:
            try:
                k = int(up.fields.get("k", "20"))
                filters = M.Filters.model_validate_json(up.fields["filters"]) if "filters" in up.fields else None
            except ValueError as e:
                raise ClientError(422, "invalid_request", f"bad k or filters: {' '.join(str(e).split())[:300]}") \
                    from None
            if not 1 <= k <= 1000:
                raise ClientError(422, "invalid_request", "k must be between 1 and 1000")
            f, vec = await run_in_threadpool(svc.features_of, up.path)
        finally:
            up.discard()
        return await run_in_threadpool(_rank, f.codes8[0], vec, k, filters)

    # -------------------------------------------------------------------------------------------
    # Reading, listing, deleting

    def _record(image_id: int):
        rec = svc.reader.get(image_id)
        if rec is None:
            raise ClientError(404, "not_found", f"no image with id {image_id}")
        return rec

    @app.get("/v1/images", response_model=M.PageOut, tags=["images"], responses=_ERRORS,
             dependencies=[require("read")])
    def list_images(after: int = Query(0, ge=0, description="the last id of the previous page"),
                    limit: int = Query(50, ge=1, le=500)):
        """The collection in id order, a page at a time."""
        recs = svc.reader.page(after, limit)
        return {"items": [svc.image_out(r) for r in recs],
                "next_after": recs[-1].id if len(recs) == limit else None}

    @app.get("/v1/images/{image_id}", response_model=M.ImageOut, tags=["images"], responses=_ERRORS,
             dependencies=[require("read")])
    def get_image(image_id: int):
        return svc.image_out(_record(image_id))

    @app.get("/v1/images/{image_id}/thumbnail", tags=["images"], responses=_ERRORS, response_class=Response,
             dependencies=[require("read")])
    def thumbnail(image_id: int, size: int = Query(256, ge=16, le=1024)):
        """A JPEG of at most size x size pixels (for the page)."""
        rec = _record(image_id)
        try:
            im = load_image(rec.path, min_size=(size, size), max_pixels=cfg.max_pixels)
        except (ImageLoadError, OSError):
            raise ClientError(404, "file_unreadable", f"the file of image {image_id} cannot be read now") from None
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.delete("/v1/images/{image_id}", status_code=204, tags=["images"], responses=_ERRORS,
                dependencies=[require("write")])
    async def delete_image(image_id: int):
        """Remove an image from the collection (and its stored upload, when no other entry uses it)."""
        if not await asyncio.wrap_future(svc.writer.submit(DeleteJob(image_id))):
            raise ClientError(404, "not_found", f"no image with id {image_id}")
        return Response(status_code=204)

    @app.get("/v1/duplicates", response_model=M.GroupsOut, tags=["images"], responses=_ERRORS,
             dependencies=[require("read")])
    def duplicates(offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=200)):
        """Duplicate groups of the collection, then look-alike groups, largest first (the pair test of `imgsim dedup`)."""
        groups = svc.live.groups(svc.stored_facts)
        page = groups[offset:offset + limit]
        recs = svc.reader.get_many([fid for _, members in page for fid, _ in members])
        out = []
        for tier, members in page:
            out.append({"tier": tier, "members": [_near(fid, recs[fid].path, m) for fid, m in members
                                                  if fid in recs]})
        return {"total": len(groups), "offset": offset, "groups": out}

    # -------------------------------------------------------------------------------------------
    # The page

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        from imgsim_fast.service.page import render_page

        return render_page(text_search=bool(svc.embedder and svc.embedder.has_text),
                           embedding=svc.model.name if svc.model else None,
                           anonymous=cfg.allow_anonymous_reads or cfg.allow_anonymous_writes)

    return app
