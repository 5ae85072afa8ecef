"""Photographers' XMP (issue 15): Lightroom's hierarchical keywords, xmp:Rating and xmp:Label are read
(embedded or from a sidecar), stored in the catalog, and filter `query`/`search` (--rating, --label,
--tag on a keyword path); a catalog of the previous schema gets them on its next index."""
import json
import sqlite3

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.cli.main import main
from imgsim_fast.features.metadata import parse_xmp, read_metadata


def _xmp(rating=None, label=None, hierarchical=(), as_elements=False) -> bytes:
    attrs = "" if as_elements else "".join(
        f' xmp:{k}="{v}"' for k, v in (("Rating", rating), ("Label", label)) if v is not None)
    elems = "" if not as_elements else "".join(
        f"<xmp:{k}>{v}</xmp:{k}>" for k, v in (("Rating", rating), ("Label", label)) if v is not None)
    bag = "".join(f"<rdf:li>{h}</rdf:li>" for h in hierarchical)
    hs = f"<lr:hierarchicalSubject><rdf:Bag>{bag}</rdf:Bag></lr:hierarchicalSubject>" if bag else ""
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/"'
        f"{attrs}>{elems}{hs}</rdf:Description></rdf:RDF></x:xmpmeta>").encode()


def _jpeg(path, seed, xmp=None):
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((64, 48))
    im.save(path, quality=90, **({"xmp": xmp} if xmp else {}))


def test_parse_xmp_reads_rating_label_and_keyword_paths():
    x = parse_xmp(_xmp(rating=4, label="Red", hierarchical=["Places|Europe|Paris", "People | Anna"]))
    assert (x["rating"], x["label"]) == (["4"], ["Red"])
    assert x["hierarchical"] == ["Places|Europe|Paris", "People | Anna"]
    assert parse_xmp(_xmp(rating="5", label="Green", as_elements=True))["rating"] == ["5"]


def test_metadata_rating_label_tags_and_sidecar_override(tmp_path):
    p = tmp_path / "a.jpg"
    _jpeg(p, 0, _xmp(rating=2, label="Yellow", hierarchical=["Places|Europe|Paris"]))
    md = read_metadata(str(p))
    assert (md.rating, md.label) == (2, "Yellow")
    assert {n for n, _, _ in md.unique_tags()} == {"places", "places|europe", "places|europe|paris"}
    (tmp_path / "a.xmp").write_bytes(_xmp(rating=5, label="Red"))  # Lightroom's sidecar: the newer edit
    md = read_metadata(str(p))
    assert (md.rating, md.label) == (5, "Red")
    (tmp_path / "a.xmp").write_bytes(_xmp(rating=7))
    md = read_metadata(str(p))
    assert md.rating == 2 and any("malformed XMP rating '7'" in e for e in md.errors)


@pytest.fixture()
def library(tmp_path, capsys):  # capsys first: the index run's stderr is checked
    root = tmp_path / "lib"
    root.mkdir()
    _jpeg(root / "five.jpg", 1, _xmp(rating=5, label="Red", hierarchical=["Places|Europe|Paris"]))
    _jpeg(root / "four.jpg", 2, _xmp(rating="4.0", label="red", hierarchical=["Places|Asia|Kyoto"]))
    _jpeg(root / "two.jpg", 3, _xmp(rating=2, label="Green", as_elements=True))
    _jpeg(root / "rejected.jpg", 4, _xmp(rating=-1))
    _jpeg(root / "none.jpg", 5)
    (root / "none.xmp").write_bytes(_xmp(label="Purple"))  # a sidecar: read, not "passed over"
    cat = str(tmp_path / "c.sqlite")
    assert main(["index", str(root), "--catalog", cat, "--workers", "1", "--no-progress"]) == 0
    return root, cat


def _query(capsys, cat, *args):
    capsys.readouterr()
    assert main(["query", "--catalog", cat, "--json", *args]) == 0
    return sorted(r["path"].rsplit("/", 1)[1] for r in json.loads(capsys.readouterr().out))


def test_query_filters_by_rating_label_and_keyword_path(library, capsys):
    root, cat = library
    assert "passed over" not in capsys.readouterr().err
    assert _query(capsys, cat, "--rating", ">=4") == ["five.jpg", "four.jpg"]
    assert _query(capsys, cat, "--rating", "2") == ["two.jpg"]
    assert _query(capsys, cat, "--rating", "<0") == ["rejected.jpg"]
    assert _query(capsys, cat, "--label", "RED") == ["five.jpg", "four.jpg"]
    assert _query(capsys, cat, "--label", "red", "--rating", "5") == ["five.jpg"]
    assert _query(capsys, cat, "--tag", "places|europe") == ["five.jpg"]
    assert _query(capsys, cat, "--tag", "Places") == ["five.jpg", "four.jpg"]
    assert _query(capsys, cat, "--where", "label=GREEN") == ["two.jpg"]
    assert _query(capsys, cat, "--label", "purple") == ["none.jpg"]
    # search takes the same filters: the nearest pictures among 4-star-and-up ones only.
    capsys.readouterr()
    assert main(["search", str(root / "two.jpg"), "--catalog", cat, "--rating", ">=4", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert sorted(h["path"].rsplit("/", 1)[1] for h in hits) == ["five.jpg", "four.jpg"]


@pytest.mark.parametrize("bad", ["six", ">=9", "=>4", ""])
def test_bad_rating_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["query", "--rating", bad])
    assert e.value.code == 2 and "is not a rating" in capsys.readouterr().err


def test_previous_schema_catalog_gets_ratings_on_next_index(library, capsys):
    root, cat = library
    db = sqlite3.connect(cat)  # back to schema 2, as an older imgsim_fast left it
    db.executescript("DROP INDEX files_rating; ALTER TABLE files DROP COLUMN rating; "
                     "ALTER TABLE files DROP COLUMN label; DROP TABLE pixel_checks; DROP TABLE keep_verdicts; "
                     "UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    db.close()
    assert main(["index", str(root), "--catalog", cat, "--workers", "1", "--no-progress"]) == 0
    assert _query(capsys, cat, "--rating", ">=4") == ["five.jpg", "four.jpg"]
