"""Debian packages as picture sources for the benchmarks: download once, unpack selected files, never install."""
from __future__ import annotations

import os
import subprocess

__all__ = ["unpack_deb"]


def unpack_deb(cache_dir: str, package: str, dest: str, members: tuple[str, ...]) -> bool:
    """Unpack the files of `package` matching the tar wildcards `members` (e.g. './usr/share/x/*.png') into
    dest, once (a .done file marks it). The .deb comes from cache_dir/debs or `apt-get download`.

    Returns False, with one line on stderr, when the package cannot be had: the caller leaves that source out.
    """
    done = os.path.join(dest, ".done")
    if os.path.exists(done):
        return True
    debs = os.path.join(cache_dir, "debs")
    os.makedirs(debs, exist_ok=True)
    deb = _find_deb(debs, package)
    if deb is None:
        subprocess.run(["apt-get", "download", "-qq", package], cwd=debs, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deb = _find_deb(debs, package)
    if deb is None:
        print(f"[corpus] Debian package {package} unavailable; its pictures are left out", flush=True)
        return False
    os.makedirs(dest, exist_ok=True)
    # dpkg-deb streams the data tarball; tar extracts only the wanted members (tuxpaint-stamps is 160 MB,
    # of which the corpus needs a few MB). --wildcards lets one pattern name a folder's files.
    fs = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", dest, "--wildcards", *members], stdin=fs.stdout,
                         stderr=subprocess.PIPE, check=False)
    fs.stdout.close()
    fs.wait()
    if tar.returncode != 0 or fs.returncode != 0:
        raise RuntimeError(f"unpacking {deb} failed: {tar.stderr.decode(errors='replace')[:300]}")
    open(done, "w").close()
    return True


def _find_deb(folder: str, package: str) -> str | None:
    hits = sorted(f for f in os.listdir(folder) if f.startswith(package + "_") and f.endswith(".deb"))
    return os.path.join(folder, hits[-1]) if hits else None
