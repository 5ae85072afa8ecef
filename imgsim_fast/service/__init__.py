"""`imgsim serve`: the HTTP API (FastAPI on uvicorn) over a catalog, with API keys, limits, one writer and a web page.

app.py builds the app; ingest.py is the one extraction function (digest, header facts, pHash codes, embedding);
writer.py the single-writer queue in front of the catalog; live.py the in-memory view readers search;
keys.py the API keys; uploads.py streaming uploads and confined server-side paths; metrics.py Prometheus.
"""
