"""Shared fixtures: the real photos unpacked by scripts/fetch_photos.sh."""
import glob
import json
import os

import shutil

import pytest

# The browser tests drive the system chromium (apt) through Playwright's Python package.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright import sync_api
except ImportError:
    sync_api = None
needs_browser = pytest.mark.skipif(
    sync_api is None or CHROMIUM is None,
    reason="needs playwright (requirements-test.txt) and chromium on PATH (scripts/setup.sh --test installs both)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO_DIR = os.path.join(REPO, ".cache", "photos")


def real_photos(min_bytes: int = 0) -> list[str]:
    """Real photos (the wallpaper packages' JPEG and PNG pictures), sorted; [] when not fetched."""
    files = sorted(
        p for p in glob.glob(os.path.join(PHOTO_DIR, "*wallpapers", "*"))
        if p.lower().endswith((".jpg", ".jpeg", ".png")) and os.path.getsize(p) >= min_bytes
    )
    return files


@pytest.fixture(scope="session", autouse=True)
def xdg_data_home(tmp_path_factory):
    """Catalogs and reports made without --catalog or --out go to the XDG data folder (io/data_dirs.py):
    a temporary one for the whole run, so that no test writes under the real ~/.local/share. Session
    scope: session fixtures that index folders run under it too. Subprocesses inherit it."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("xdg-data")
    mp.setenv("XDG_DATA_HOME", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def photos() -> list[str]:
    files = real_photos()
    if len(files) < 5:
        pytest.skip(f"real photos missing under {PHOTO_DIR}: run scripts/fetch_photos.sh (scripts/setup.sh does)")
    return files


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP (vision, text, tokenizer, processor) saved with save_pretrained, loaded offline."""
    transformers = pytest.importorskip("transformers")
    import torch
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    d = tmp_path_factory.mktemp("tiny-clip")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": 26 + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": 52, "<|endoftext|>": 53})
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=54, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=52, eos_token_id=53,
                         pad_token_id=53),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    transformers.CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield str(d)
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old


def tree_snapshot(*roots) -> dict:
    """path -> sha256 of every file under `roots`: compared before and after, it shows what a run touched."""
    import hashlib

    out = {}
    for root in roots:
        for dp, _, fs in os.walk(root):
            for f in fs:
                p = os.path.join(dp, f)
                with open(p, "rb") as fh:
                    out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out
