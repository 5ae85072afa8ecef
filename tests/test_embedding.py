"""Embeddings: the real EfficientNet-Lite0 weights, a tiny random CLIP saved and loaded offline, the file
pipeline (workers, failures, order), and the errors for models that are not available."""
import json
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

from imgsim_fast.features.embedding import (EmbeddingModel, ModelNotAvailableError, embed_images, embed_paths,
                                   embed_text, load_model)
from imgsim_fast.features.embedding.batching import _prepared_stream
from imgsim_fast.features.embedding.preprocess import PreprocessSpec, prepare_chunk, prepare_image
from imgsim_fast.io.loading import load_image

from conftest import PHOTO_DIR

UKUI = os.path.join(PHOTO_DIR, "ukui-wallpapers")
# ImageNet-1k index 506 is "coil, spiral, volute"; the photo is a ribbon twisted into a spiral.
COIL_PHOTO, COIL_CLASS = os.path.join(UKUI, "usr_share_backgrounds_2004default.jpg"), 506


def synthetic(seed, size=(97, 61), mode="RGB"):
    """A smooth random image (gradients + blobs), so resizing has structure to preserve."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [np.sin(xx / rng.uniform(3, 20) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(3, 20)) for _ in range(3)]
    a = ((np.stack(chans, -1) + 1) * 127.5).astype(np.uint8)
    return Image.fromarray(a).convert(mode)


@pytest.fixture(scope="module")
def effnet():
    return load_model("efficientnet-lite0", device="cpu")


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 with the shipped ImageNet weights


def test_efficientnet_real_photo_and_mirror_same_class(effnet):
    if not os.path.isfile(COIL_PHOTO):
        pytest.skip(f"real photo missing: {COIL_PHOTO} (scripts/fetch_photos.sh fetches it)")
    a = prepare_image(load_image(COIL_PHOTO), effnet.spec)
    batch = torch.from_numpy(np.stack([a, np.ascontiguousarray(a[:, ::-1])]))
    probs = effnet.logits(batch).softmax(dim=1)
    top = probs.argmax(dim=1).tolist()
    print(f"EfficientNet-Lite0 top-1 for {os.path.basename(COIL_PHOTO)}: {top} p={probs.max(dim=1).values.tolist()}")
    assert top == [COIL_CLASS, COIL_CLASS]
    # Random weights give ~1/1000 spread over classes; the real ones are confident on this image
    # (0.42 measured; a wrong normalisation such as ImageNet mean/std or BGR order changes it).
    assert probs[0, COIL_CLASS] > 0.25 and probs[1, COIL_CLASS] > 0.25


def test_efficientnet_embeddings_normalised_batch_equals_single(effnet):
    imgs = [synthetic(i, size=(300 + 17 * i, 260)) for i in range(3)] + [synthetic(9, mode="L")]
    v = embed_images(imgs, effnet, batch_size=3)
    assert v.shape == (4, 1280) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    one = np.concatenate([embed_images([im], effnet) for im in imgs])
    np.testing.assert_allclose(v, one, atol=1e-4)
    # Features of different images differ: a constant embedding would pass the checks above.
    sims = v @ v.T
    assert sims[np.triu_indices(4, 1)].max() < 0.999
    assert embed_images([], effnet).shape == (0, 1280)
    with pytest.raises(ValueError, match="no text tower"):
        embed_text(["a red car"], effnet)


def test_inputs_with_the_same_pixels_are_embedded_once(effnet, monkeypatch):
    """embed_inputs runs the network once per distinct input and copies the row to every input with those
    pixels; the rows are those of embedding every input (a copy can only be as right as the first)."""
    from imgsim_fast.features.extract import embed_inputs

    views = [np.asarray(synthetic(i, size=(224, 224))) for i in range(3)]
    arrays = [views[0], views[1], views[0].copy(), views[2], views[1].copy(), views[0].copy()]
    seen = []
    real = effnet.embed_pixels
    monkeypatch.setattr(effnet, "embed_pixels", lambda x: seen.append(len(x)) or real(x))
    got = embed_inputs(effnet, arrays, batch=2)
    assert sum(seen) == 3  # not 6
    monkeypatch.setattr(effnet, "embed_pixels", real)
    each = np.concatenate([embed_inputs(effnet, [a]) for a in arrays])
    np.testing.assert_allclose(got, each, atol=1e-5)
    assert np.array_equal(got[0], got[2]) and np.array_equal(got[0], got[5]) and np.array_equal(got[1], got[4])
    # One pixel apart is another input.
    other = views[0].copy()
    other[0, 0, 0] ^= 1
    seen.clear()
    monkeypatch.setattr(effnet, "embed_pixels", lambda x: seen.append(len(x)) or real(x))
    assert embed_inputs(effnet, [views[0], other]).shape == (2, 1280) and sum(seen) == 2
    assert embed_inputs(effnet, []).shape == (0, 1280)


def test_a_checksum_collision_merges_no_inputs(monkeypatch):
    """The checksum only proposes: inputs are one when every byte, the shape and the type agree."""
    from imgsim_fast.features import extract

    monkeypatch.setattr(extract, "zlib", types.SimpleNamespace(crc32=lambda data: 7))  # every input collides
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[3, 3, 2] = 1
    arrays = [a, b, a.copy(), np.zeros((3, 4, 4), np.uint8), np.zeros((4, 4, 3), np.int8), b.copy()]
    big = np.zeros((8, 8, 3), np.uint8)
    big[1::2] = 9
    arrays += [big[::2, ::2], np.asfortranarray(a)]  # views that are not C-contiguous: equal to a
    unique, where = extract._distinct(arrays)
    assert where.tolist() == [0, 1, 0, 2, 3, 1, 0, 0] and len(unique) == 4


def test_tf_center_crop_geometry():
    # crop_padding=0: the crop is the whole short side (16 px) of a 32x16 image, centred. TF crops
    # before resizing, so the black borders must not bleed in through the bicubic filter's support.
    spec = PreprocessSpec("tf_center_crop", size=8, crop_padding=0)
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, 8:24] = 200  # the central 16x16 square
    out = prepare_image(Image.fromarray(a), spec)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out.min() == 200 and out.max() == 200  # only the central square was sampled


# --------------------------------------------------------------------------------------------------
# the file pipeline


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    paths = []
    for i in range(5):
        p = d / f"good{i}.png" if i % 2 else d / f"good{i}.jpg"
        synthetic(i, size=(400, 300)).save(p)
        paths.append(str(p))
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("not an image at all\n" * 20)
    good_jpeg = (d / "good0.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 3])
    bad = [str(d / "empty.jpg"), str(d / "text.jpg"), str(d / "truncated.jpg"), str(d / "missing.jpg")]
    # Interleave so failures sit between good files, checking order and indices.
    order = [paths[0], bad[0], paths[1], bad[1], paths[2], bad[2], paths[3], bad[3], paths[4]]
    return order


@pytest.mark.parametrize("workers", [0, 2])
def test_embed_paths_failures_are_per_file(effnet, mixed_files, workers):
    r = embed_paths(mixed_files, effnet, batch_size=2, workers=workers, progress=False)
    assert r.paths == [p for p in mixed_files if "good" in p]
    np.testing.assert_array_equal(r.indices, [0, 2, 4, 6, 8])
    assert r.vectors.shape == (5, 1280) and r.device == "cpu" and r.model == "efficientnet-lite0"
    np.testing.assert_allclose(np.linalg.norm(r.vectors, axis=1), 1.0, atol=1e-5)
    kinds = {os.path.basename(f.path): f.kind for f in r.failures}
    assert kinds == {"empty.jpg": "empty", "text.jpg": "not_image", "truncated.jpg": "truncated",
                     "missing.jpg": "missing"}
    assert all(f.reason for f in r.failures)
    # Same vectors as preparing each file by hand (the pipeline adds no differences of its own).
    prepared = np.stack([prepare_chunk(effnet.spec, [p])[0][0] for p in r.paths])
    by_hand = effnet.embed_pixels(torch.from_numpy(prepared)).numpy()
    np.testing.assert_allclose(r.vectors, by_hand, atol=1e-4)


def test_embed_paths_float16_and_empty(effnet, mixed_files):
    r = embed_paths(mixed_files[:1], effnet, dtype="float16", workers=0)
    assert r.vectors.dtype == np.float16 and r.vectors.shape == (1, 1280)
    assert abs(float(np.linalg.norm(r.vectors.astype(np.float32))) - 1) < 1e-2
    r = embed_paths([], effnet)
    assert r.vectors.shape == (0, 1280) and r.paths == [] and r.failures == []
    with pytest.raises(ValueError, match="dtype"):
        embed_paths(mixed_files[:1], effnet, dtype="int8")


def _crashing_chunk(spec, paths):
    """Worker task that dies (as a segfaulting decoder would) on files named crash*."""
    if any(os.path.basename(p).startswith("crash") for p in paths):
        os._exit(3)
    return prepare_chunk(spec, paths)


def test_worker_crash_blames_only_the_file(tmp_path):
    spec = PreprocessSpec("tf_center_crop", size=16, crop_padding=0)
    paths = []
    for i in range(7):
        p = tmp_path / (f"crash{i}.png" if i == 3 else f"ok{i}.png")
        synthetic(i, size=(40, 30)).save(p)
        paths.append(str(p))
    out = list(_prepared_stream(paths, spec, workers=2, chunk=2, task=_crashing_chunk))
    assert len(out) == 7
    assert [f.kind for _, f in out if f is not None] == ["worker_crash"]
    assert out[3][1] is not None and out[3][1].path == paths[3]
    assert all(a is not None and a.shape == (16, 16, 3) for i, (a, _) in enumerate(out) if i != 3)


# --------------------------------------------------------------------------------------------------
# a tiny random CLIP, saved with save_pretrained and loaded offline


def test_tiny_clip_offline_images_and_text(tiny_clip):
    m = load_model(tiny_clip, device="cpu")
    assert isinstance(m, EmbeddingModel) and m.dim == 16 and m.has_text and m.spec.size == 32
    imgs = [synthetic(i, size=(50 + 9 * i, 40)) for i in range(5)]
    v = embed_images(imgs, m, batch_size=3)
    assert v.shape == (5, 16) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v, np.concatenate([embed_images([im], m) for im in imgs]), atol=1e-5)
    t = embed_text(["a red car", "cat", "the quick brown fox"], m)
    assert t.shape == (3, 16) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    # Padding to the longest text in the batch must not change a text's vector.
    np.testing.assert_allclose(t, np.concatenate([embed_text([s], m) for s in ["a red car", "cat",
                                                  "the quick brown fox"]]), atol=1e-5)
    assert np.abs(t[0] - t[1]).max() > 1e-3  # different texts, different vectors
    # Same vectors as transformers' own get_image_features on the processor's output.
    from transformers import CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ref_model = CLIPModel.from_pretrained(tiny_clip, local_files_only=True).eval()
    proc = CLIPImageProcessorPil.from_pretrained(tiny_clip, local_files_only=True)
    px = proc(imgs, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = ref_model.get_image_features(pixel_values=px)
    ref = getattr(out, "pooler_output", out)
    ref = torch.nn.functional.normalize(ref, dim=1).numpy()
    np.testing.assert_allclose(v, ref, atol=2e-3)


def test_clip_preprocessing_matches_image_processor():
    pytest.importorskip("transformers")
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil()  # openai/clip-vit-base-patch32's settings: 224 shortest edge, 224 crop
    mean, std = np.array(proc.image_mean), np.array(proc.image_std)
    spec = PreprocessSpec("shortest_edge", size=224, resize=224, mean=tuple(255 * mean), std=tuple(255 * std))
    imgs = [synthetic(1, (640, 480)), synthetic(2, (300, 301)), synthetic(3, (225, 1000)), synthetic(4, (1001, 333))]
    if os.path.isfile(COIL_PHOTO):
        imgs.append(load_image(COIL_PHOTO))
    for im in imgs:
        ref = proc(im, return_tensors="np")["pixel_values"][0]
        ours = (prepare_image(im, spec).astype(np.float32).transpose(2, 0, 1) - 255 * mean[:, None, None]) / (
            255 * std[:, None, None])
        assert ours.shape == ref.shape
        # Same uint8 pixels; only the float normalisation's rounding differs.
        np.testing.assert_allclose(ours, ref, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# models that are not available


def test_unavailable_models_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="unknown model 'resnet-9000'.*efficientnet-lite0"):
        load_model("resnet-9000", device="cpu")
    with pytest.raises(ModelNotAvailableError, match="not in the Hugging Face cache.*hf download"):
        load_model("imgsim-fast-tests/no-such-model", device="cpu")
    with pytest.raises(ModelNotAvailableError, match="not a model folder"):
        load_model(str(tmp_path), device="cpu")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotAvailableError, match="a file, not a model folder"):
        load_model(str(tmp_path / "weights.bin"), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelNotAvailableError, match="not supported"):
        load_model(str(tmp_path), device="cpu")


def test_device_choice_is_explicit(effnet):
    from imgsim_fast.features.embedding import resolve_device

    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert effnet.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
