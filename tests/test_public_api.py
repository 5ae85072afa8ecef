"""The one face (issue 12): `import imgsim_fast as ims` reaches every job lazily, every module's `__all__`
names exist, and the README's Python example runs as a plain script (no main guard)."""
from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

import imgsim_fast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_is_lazy_and_every_public_name_resolves():
    code = ("import sys, imgsim_fast as ims; heavy = [m for m in ('numpy', 'torch', 'numba') if m in sys.modules]; "
            "assert not heavy, heavy; [getattr(ims, n) for n in ims.__all__]; "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError):
        imgsim_fast.no_such_name  # noqa: B018


def _modules():
    for m in pkgutil.walk_packages(imgsim_fast.__path__, "imgsim_fast."):
        if m.name.endswith("__main__"):
            continue
        yield m.name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_every_all_name_exists(name):
    """`from module import *` never breaks: each name in a module's __all__ is defined there."""
    mod = importlib.import_module(name)
    missing = [n for n in getattr(mod, "__all__", ()) if not hasattr(mod, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def _readme_example() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Python\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_a_plain_script(tmp_path, photos):
    """Saved as it is, without `if __name__ == "__main__":`, the example must run once, use worker
    processes, and find the planted duplicate (the workers used to re-run the script and fail every file)."""
    src = _readme_example()
    assert "__main__" not in src
    lib = tmp_path / "photos"
    lib.mkdir()
    for i, p in enumerate(photos[:6]):
        shutil.copyfile(p, lib / f"p{i}{os.path.splitext(p)[1]}")
    with Image.open(photos[0]) as im:  # an edited copy: half size, re-encoded
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(lib / "beach.jpg", quality=80)
    script = tmp_path / "example.py"
    script.write_text(src)
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = out.stdout.splitlines()
    i = lines.index("duplicate keep photos/p0.png")  # the original, not its half-size re-encoded copy
    assert lines[i + 1].startswith("    photos/beach.jpg - same picture"), out.stdout
    assert sum(ln.startswith(("duplicate ", "similar ")) for ln in lines) == 1, out.stdout
    hits = [ln for ln in lines if re.match(r"\d\.\d{3} ", ln)]
    assert len(hits) == 5 and hits[0].endswith("beach.jpg"), out.stdout  # the query itself ranks first
    assert (tmp_path / "photos.sqlite").exists()
