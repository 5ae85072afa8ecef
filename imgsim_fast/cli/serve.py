"""`imgsim serve`: the HTTP service over a catalog (imgsim_fast/service), and `imgsim serve keys add|revoke|list`."""
from __future__ import annotations

import json
import sys

from imgsim_fast.cli.types import positive_int

__all__ = ["add_subcommands"]


def _service_missing() -> ValueError:
    return ValueError("imgsim serve needs the [service] extra: pip install 'imgsim_fast[service]'")


def cmd_serve(args) -> int:
    if args.keys_cmd:
        return cmd_keys(args)
    if not args.catalog:
        raise ValueError("imgsim serve needs --catalog PATH")
    try:
        import uvicorn

        from imgsim_fast.service.app import create_app
        from imgsim_fast.service.config import ServiceConfig
    except ImportError:
        raise _service_missing() from None
    cfg = ServiceConfig(
        args.catalog, storage=args.storage, allow_roots=args.allow_root or [],
        allow_anonymous_reads=args.allow_anonymous_reads, allow_anonymous_writes=args.allow_anonymous_writes,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_pixels=args.max_pixels,
        request_timeout_s=args.timeout, embed_model=None if args.embed.lower() == "none" else args.embed,
        max_batch=args.batch, threads=args.workers)
    app = create_app(cfg)
    live = app.state.svc.live
    print(f"imgsim serve: {cfg.catalog} ({len(live)} files) on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    missing = live.missing_dedup  # a count over every live file
    if missing:
        print(f"imgsim serve: {missing} files lack dedup's features (indexed by `imgsim index`, or by "
              "an earlier version's preparation) and take no "
              "part in duplicate answers until they are added again (POST /v1/images/from-path adds what they lack)",
              file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_keep_alive=5, limit_concurrency=args.max_connections)
    return 0


def cmd_keys(args) -> int:
    from imgsim_fast.service.keys import KeyStore, keys_path

    if not args.catalog:
        raise ValueError("imgsim serve keys needs --catalog PATH (keys live beside it)")
    store = KeyStore(keys_path(args.catalog))
    if args.keys_cmd == "add":
        token, key = store.add(args.name or "", [s.strip() for s in args.scopes.split(",") if s.strip()])
        print(token)
        print(f"key {key.id} ({', '.join(key.scopes)}) added; the key above is shown only now", file=sys.stderr)
    elif args.keys_cmd == "revoke":
        key = store.revoke(args.id)
        print(f"key {key.id} revoked", file=sys.stderr)
    else:
        print(json.dumps([k.public() for k in store.list()], indent=1))
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("serve", help="HTTP service over a catalog: add, check, search, duplicate groups, a web page")
    p.add_argument("--catalog", help="catalog file (created if missing)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=positive_int, default=None,
                   help="request threads (decoding, catalog reads); one writer thread always")
    p.add_argument("--embed", default="efficientnet-lite0", metavar="MODEL",
                   help="embedding model (a CLIP model also enables text search), or 'none' for hashes only")
    p.add_argument("--storage", help="folder for uploaded images (default <catalog>.uploads)")
    p.add_argument("--allow-root", action="append", metavar="DIR",
                   help="allow adding server-side files under DIR (repeatable); off by default")
    p.add_argument("--allow-anonymous-reads", action="store_true", help="reads without an API key")
    p.add_argument("--allow-anonymous-writes", action="store_true", help="reads and writes without an API key")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest upload in MiB (default 64)")
    p.add_argument("--max-pixels", type=positive_int, default=1 << 28,
                   help="largest picture by its header, in pixels (default 2^28)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take (default 60)")
    p.add_argument("--batch", type=positive_int, default=32, help="jobs per write transaction and embedding batch")
    p.add_argument("--max-connections", type=positive_int, default=256, help="concurrent connections (then 503)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve, keys_cmd=None)
    keys = p.add_subparsers(dest="keys_cmd", metavar="keys")
    k = keys.add_parser("keys", help="API keys: add, revoke, list").add_subparsers(dest="keys_cmd", required=True)
    a = k.add_parser("add", help="create a key; prints it once")
    a.add_argument("--catalog", required=True)
    a.add_argument("--scopes", default="read", help="read, write or read,write (default read)")
    a.add_argument("--name", help="a label for the key")
    r = k.add_parser("revoke", help="revoke a key by id")
    r.add_argument("--catalog", required=True)
    r.add_argument("id")
    ls = k.add_parser("list", help="keys with their scopes (never the secrets)")
    ls.add_argument("--catalog", required=True)
