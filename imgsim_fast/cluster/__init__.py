"""Past one machine: feature extraction and the near-duplicate join on Ray (issue 14; `pip install
imgsim_fast[cluster]`).

`sources` lists and shards what to read, `extract` writes Parquet feature shards with the per-file function
single-machine dedup uses, `join` finds hash candidate pairs by a distributed pigeonhole join, `dedup` turns
them into the groups `imgsim dedup` reports. Ray is imported only inside these modules.
"""
