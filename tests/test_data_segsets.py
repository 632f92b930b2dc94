"""The segmentation benchmarks installed by the data stage from tiny fake archives in their
published layouts, served from 127.0.0.1 (with Range, and responses cut short on purpose), or
read from a path: the class lists, every kind's label mapping value by value, JPEG bytes kept,
resume, re-runs, refusals, and each mistake as one line through the CLI."""

import errno
import hashlib
import json
import logging
import re
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from dinov2clip import data
from dinov2clip.config import SEGSET_KINDS, ConfigError, load_config
from dinov2clip.data.segmentation import fetch
from dinov2clip.data.segmentation.sources import KINDS
from dinov2clip.formats.segsets import SegSet, segset_dir
from tests.helpers import run_cli, tree_bytes, write_config
from tests.segsets_fakes import (
    ADE_LABELS,
    CITY_LABEL_IDS,
    CITY_TRAIN_IDS,
    COCO_LABELS,
    CONTEXT_LABELS,
    VOC_LABELS,
    ArchiveServer,
    ade_members,
    cityscapes_members,
    coco_members,
    context_members,
    mapped,
    voc_members,
    write_folder,
    write_tar,
    write_zip,
)

VOC_TAR, ADE_ZIP = "VOCtrainval_11-May-2012.tar", "ADEChallengeData2016.zip"
COCO_ZIPS = ("val2017.zip", "stuffthingmaps_trainval2017.zip")


@pytest.fixture
def published(tmp_path):
    """The downloadable archives, built in their published layouts under published/."""
    d = tmp_path / "published"
    d.mkdir()
    write_tar(d / VOC_TAR, voc_members())
    write_zip(d / ADE_ZIP, ade_members())
    images, maps = coco_members()
    write_zip(d / COCO_ZIPS[0], images)
    write_zip(d / COCO_ZIPS[1], maps)
    return d


@pytest.fixture
def server(published, monkeypatch):
    monkeypatch.setattr(fetch, "RETRY_WAIT_S", 0.0)
    fake = ArchiveServer({f"/{p.name}": p.read_bytes() for p in published.iterdir()})
    yield fake
    fake.close()


def urls(server, kind: str) -> list[str]:
    files = {"voc21": [VOC_TAR], "voc20": [VOC_TAR], "ade20k": [ADE_ZIP],
             "coco-stuff": list(COCO_ZIPS), "coco-object": list(COCO_ZIPS)}[kind]
    return [f"{server.url}/{f}" for f in files]


def config(tmp_path, sets: dict, root: str = "artifacts", name: str = "c.toml", **settings):
    path = write_config(tmp_path / name, {
        "artifacts": str(tmp_path / root), "data.synthetic.tiny_models": False, **settings,
        **{f"data.segmentation_sets.{n}": spec for n, spec in sets.items()}})
    return load_config(path)


def label(art, name: str, key: str) -> np.ndarray:
    with Image.open(segset_dir(art, name) / "labels" / f"{key}.png") as im:
        assert im.mode == "L"
        return np.asarray(im)


def meta(art, name: str) -> dict:
    return json.loads((segset_dir(art, name) / "classes.json").read_text())


def gets(server, path: str) -> list:
    return [rng for p, rng in server.requests if p == path]


def test_every_kind_is_known_with_its_published_classes():
    assert tuple(KINDS) == SEGSET_KINDS
    lengths = {"voc20": 20, "voc21": 21, "context59": 59, "context60": 60, "coco-object": 81,
               "coco-stuff": 171, "cityscapes": 19, "ade20k": 150}
    assert {k: len(v.classes) for k, v in KINDS.items()} == lengths
    assert {k for k, v in KINDS.items() if v.background} == {"voc21", "context60", "coco-object"}
    for kind in ("voc21", "context60", "coco-object"):
        assert KINDS[kind].classes[0] == "background"
    assert KINDS["voc21"].classes[1:] == KINDS["voc20"].classes
    assert KINDS["context60"].classes[1:] == KINDS["context59"].classes
    assert KINDS["voc20"].classes[10] == "diningtable" and KINDS["voc20"].classes[-1] == "tvmonitor"
    assert KINDS["context59"].classes[:4] == ("aeroplane", "bag", "bed", "bedclothes")
    assert KINDS["ade20k"].classes[7] == "bed" and KINDS["ade20k"].classes[-1] == "flag"
    stuff = KINDS["coco-stuff"].classes
    assert stuff[:2] == ("person", "bicycle") and stuff[11] == "stop sign"
    assert stuff[79:81] == ("toothbrush", "banner") and stuff[-1] == "wood"
    assert "street sign" not in stuff and "hair brush" not in stuff
    assert KINDS["coco-object"].classes[1:] == stuff[:80]
    assert KINDS["cityscapes"].classes[:3] == ("road", "sidewalk", "building")
    assert KINDS["cityscapes"].classes[-1] == "bicycle"
    assert {k for k, v in KINDS.items() if v.needs_path} == {"context59", "context60",
                                                             "cityscapes"}


def test_voc_and_context_are_prompted_with_groupvits_names():
    """The protocol prompts "table", "plant", "monitor" (and Context's "airplane"), as GroupViT's
    dataset classes name them; every other kind prompts its classes as they are."""
    voc, ctx = KINDS["voc20"].prompts, KINDS["context59"].prompts
    assert (voc[10], voc[15], voc[19]) == ("table", "plant", "monitor")
    assert ctx[0] == "airplane" and "monitor" in ctx and "tvmonitor" not in ctx
    assert ctx.count("table") == 1 and ctx.count("plant") == 1
    assert KINDS["voc21"].prompts[0] == "background"
    for kind in ("ade20k", "coco-stuff", "coco-object", "cityscapes"):
        assert KINDS[kind].prompts == KINDS[kind].classes


# Each label value in the fakes -> the class it must become (absent: 255, ignored).
VOC21 = {v: v for v in range(21)}
VOC20 = {v: v - 1 for v in range(1, 21)}
# COCO-Stuff ids - 1: person 0, stop sign 12 (after the removed street sign), toothbrush 89,
# banner 91, wood 181; street sign 11 and hair brush 90 were removed from COCO.
COCO_STUFF = {0: 0, 12: 11, 89: 79, 91: 80, 181: 170}
COCO_OBJECT = {0: 1, 12: 12, 89: 80, 91: 0, 181: 0, 255: 0}  # stuff and unlabeled: background
CITY_FROM_LABEL_IDS = {7: 0, 33: 18}  # road, bicycle; labelIds 0 and 4 are void


def test_every_kind_installs_its_labels_mapped_and_its_images_as_they_are(tmp_path, server,
                                                                          caplog):
    context = write_folder(tmp_path / "context", context_members())
    city = write_folder(tmp_path / "cityscapes", cityscapes_members())
    sets = {kind: {"urls": urls(server, kind)} for kind in
            ("voc21", "voc20", "ade20k", "coco-stuff", "coco-object")}
    sets["context59"] = {"path": str(context)}
    sets["context60"] = {"path": str(context / "VOCdevkit" / "VOC2010")}  # any top folder
    sets["cityscapes"] = {"path": str(city)}
    cfg = config(tmp_path, sets)
    with caplog.at_level(logging.INFO, logger="dinov2clip"):
        data.run(cfg)
    art = cfg.root
    expected = {
        "voc21": {k: mapped(v, VOC21) for k, v in VOC_LABELS.items()},
        "voc20": {k: mapped(v, VOC20) for k, v in VOC_LABELS.items()},
        "ade20k": {k: mapped(v, {v: v - 1 for v in range(1, 151)}) for k, v in ADE_LABELS.items()},
        "coco-stuff": {k: mapped(v, COCO_STUFF) for k, v in COCO_LABELS.items()},
        "coco-object": {k: mapped(v, COCO_OBJECT) for k, v in COCO_LABELS.items()},
        "context59": {k: mapped(v, {v: v - 1 for v in range(1, 60)})
                      for k, v in CONTEXT_LABELS.items()},
        "context60": {k: mapped(v, {v: v for v in range(60)}) for k, v in CONTEXT_LABELS.items()},
        "cityscapes": {**{k: mapped(v, {0: 0, 18: 18}) for k, v in CITY_TRAIN_IDS.items()},
                       **{k: mapped(v, CITY_FROM_LABEL_IDS) for k, v in CITY_LABEL_IDS.items()}},
    }
    for name, labels in expected.items():
        seg = SegSet(segset_dir(art, name))
        classes, background = seg.read_classes()
        assert (classes, background) == (list(KINDS[name].classes), KINDS[name].background)
        assert [s.key for s in seg.samples()] == sorted(labels), name
        for key, want in labels.items():
            got = label(art, name, key)
            assert got.dtype == np.uint8 and (got == want).all(), (name, key, got, want)
        assert not (seg.path / "pending.json").exists()
    # spot checks of the mapping itself, not only through `mapped`
    assert label(art, "voc20", "2007_000032")[0, :5].tolist() == [255, 0, 19, 255, 255]
    assert label(art, "coco-object", "000000000139")[0, :5].tolist() == [1, 255, 12, 80, 0]
    assert label(art, "cityscapes", "lindau_000001_000019")[0, :5].tolist() == [0, 18, 255, 255,
                                                                                255]

    # Images are the archive's bytes, not re-encoded; train-split members never come in.
    voc, (coco_images, _) = voc_members(), coco_members()
    jpg = segset_dir(art, "voc21") / "images" / "2007_000032.jpg"
    assert jpg.read_bytes() == voc["VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg"]
    assert (segset_dir(art, "coco-stuff") / "images" / "000000000139.jpg").read_bytes() == \
        coco_images["val2017/000000000139.jpg"]
    png = segset_dir(art, "cityscapes") / "images" / "frankfurt_000000_000294.png"
    assert png.read_bytes() == cityscapes_members()[
        "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"]
    assert sorted(p.name for p in (segset_dir(art, "voc21") / "images").iterdir()) == [
        "2007_000032.jpg", "2007_000033.jpg"]

    # Every skip counted by reason; values the published list does not name, counted too.
    voc = meta(art, "voc21")
    assert voc["skipped"] == {"label_size_differs": 1, "listed_without_image": 1, "no_label": 1}
    assert voc["unpublished_label_values"] == {"labels": 1, "pixels": 16}  # the 22s
    assert voc["images"] == 2 and voc["published_images"] == 1449
    sha = hashlib.sha256((tmp_path / "published" / VOC_TAR).read_bytes()).hexdigest()
    assert voc["archives"] == {VOC_TAR: sha}
    assert voc["source"] == {"kind": "voc21", "max_images": 0, "urls": urls(server, "voc21")}
    assert meta(art, "coco-stuff")["skipped"] == {"no_label": 1}  # 000000000632
    assert meta(art, "coco-object")["unpublished_label_values"] == {"labels": 2, "pixels": 36}
    assert meta(art, "cityscapes")["source"] == {"kind": "cityscapes", "max_images": 0,
                                                  "path": str(city)}
    assert meta(art, "cityscapes")["archives"] == {}
    assert (f"segmentation set voc21: installed, 2 images (voc21, 1449 published), 21 classes "
            f"with background, from {VOC_TAR} (sha256 {sha[:12]}); skipped: 1 "
            "label_size_differs, 1 listed_without_image, 1 no_label; 1 labels held values the "
            "published list does not name (16 pixels, ignored)") in caplog.text
    assert (f"segmentation set context59: installed, 2 images (context59, 5105 published), 59 "
            f"classes, from {context}; skipped: none") in caplog.text
    # voc21 and voc20 share one download, coco-stuff and coco-object two
    assert gets(server, f"/{VOC_TAR}") == [None]
    assert gets(server, f"/{COCO_ZIPS[0]}") == [None] and gets(server, f"/{COCO_ZIPS[1]}") == [None]
    assert sorted(p.name for p in (art / "downloads" / "segsets").iterdir()
                  if not p.name.endswith(".lock")) == sorted(
        [VOC_TAR, ADE_ZIP, *COCO_ZIPS] + [f + ".sha256" for f in (VOC_TAR, ADE_ZIP, *COCO_ZIPS)])


def clean_install(tmp_path, server, kind: str = "voc21", **spec) -> dict[str, bytes]:
    cfg = config(tmp_path, {kind: {"urls": urls(server, kind), **spec}}, root="clean",
                 name="clean.toml")
    data.run(cfg)
    return tree_bytes(segset_dir(cfg.root, kind))


def test_a_download_cut_short_resumes_with_range_within_the_call(tmp_path, server, caplog):
    server.cut(f"/{VOC_TAR}", after=3000)
    cfg = config(tmp_path, {"voc21": {"urls": urls(server, "voc21")}})
    with caplog.at_level(logging.INFO, logger="dinov2clip"):
        data.run(cfg)
    assert gets(server, f"/{VOC_TAR}") == [None, "bytes=3000-"]
    assert "broke off at 3,000 bytes" in caplog.text
    tar = cfg.root / "downloads" / "segsets" / VOC_TAR
    assert tar.read_bytes() == (tmp_path / "published" / VOC_TAR).read_bytes()
    assert not tar.with_name(VOC_TAR + ".part").exists()
    assert tree_bytes(segset_dir(cfg.root, "voc21")) == clean_install(tmp_path, server)


def test_a_download_that_keeps_breaking_stops_in_one_line_and_the_next_run_resumes(
        tmp_path, server, monkeypatch):
    monkeypatch.setattr(fetch, "RETRIES", 1)
    server.cut(f"/{VOC_TAR}", after=2000, times=2)
    cfg = config(tmp_path, {"voc21": {"urls": urls(server, "voc21")}})
    with pytest.raises(ConfigError, match=r"^data.segmentation_sets.voc21: the download of "
                       r"http://127.0.0.1:\d+/VOCtrainval_11-May-2012.tar broke off 2 times "
                       r"\(2,000 of [\d,]+ bytes came\); re-run to resume it from 4,000 bytes, "
                       r"or download it yourself into "
                       r".*/downloads/segsets/VOCtrainval_11-May-2012.tar and re-run, or give "
                       r"data.segmentation_sets.voc21.path = the folder holding it$") as err:
        data.run(cfg)
    assert "\n" not in str(err.value)
    part = cfg.root / "downloads" / "segsets" / (VOC_TAR + ".part")
    assert part.stat().st_size == 4000 and not segset_dir(cfg.root, "voc21").exists()
    data.run(cfg)  # the server behaves now
    assert gets(server, f"/{VOC_TAR}") == [None, "bytes=2000-", "bytes=4000-"]
    assert tree_bytes(segset_dir(cfg.root, "voc21")) == clean_install(tmp_path, server)


def test_an_interrupted_install_resumes_and_ends_as_a_clean_one(tmp_path, server, monkeypatch):
    cfg = config(tmp_path, {"coco-stuff": {"urls": urls(server, "coco-stuff")}})
    original, calls = SegSet.write_encoded, []

    def killed_after_one(self, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # as Ctrl-C or a kill between two samples
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SegSet, "write_encoded", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        data.run(cfg)
    seg = SegSet(segset_dir(cfg.root, "coco-stuff"))
    assert seg.pending_file.is_file() and not seg.classes_file.exists()
    assert [p.name for p in seg.images.iterdir()] == ["000000000139.jpg"]
    with pytest.raises(ConfigError, match="not finished: re-run the data stage"):
        seg.read_classes()  # what eval says of it
    monkeypatch.setattr(SegSet, "write_encoded", original)
    data.run(cfg)
    assert len(server.requests) == 2  # each archive once: the resume downloads nothing
    assert tree_bytes(seg.path) == clean_install(tmp_path, server, "coco-stuff")
    assert meta(cfg.root, "coco-stuff")["unpublished_label_values"] == {"labels": 2, "pixels": 36}

    # A partial build from another source is not mixed in: it starts again.
    shutil.rmtree(seg.path)
    monkeypatch.setattr(SegSet, "write_encoded", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        data.run(cfg)
    monkeypatch.setattr(SegSet, "write_encoded", original)
    one = config(tmp_path, {"coco-stuff": {"urls": urls(server, "coco-stuff"), "max_images": 2}})
    data.run(one)
    assert meta(one.root, "coco-stuff")["images"] == 2
    assert meta(one.root, "coco-stuff")["skipped"] == {}  # 000000000632 is the third key


def test_a_rerun_does_nothing_and_another_source_is_refused(tmp_path, server, caplog):
    cfg = config(tmp_path, {"voc20": {"urls": urls(server, "voc20")}})
    data.run(cfg)
    before = tree_bytes(segset_dir(cfg.root, "voc20"))
    server.requests.clear()
    with caplog.at_level(logging.INFO, logger="dinov2clip"):
        data.run(cfg)
    assert server.requests == []
    assert "segmentation set voc20: already installed, 2 images" in caplog.text
    assert tree_bytes(segset_dir(cfg.root, "voc20")) == before
    other = config(tmp_path, {"voc20": {"urls": urls(server, "voc20"), "max_images": 1}})
    with pytest.raises(ConfigError, match=r"data.segmentation_sets.voc20: .*segsets/voc20 was "
                       r"made from voc20 from http://127.0.0.1:\d+/VOCtrainval_11-May-2012.tar; "
                       r"delete it to rebuild from voc20 from .*, max_images 1$"):
        data.run(other)
    # A directory the synthetic shapes made is not taken over either.
    SegSet(segset_dir(cfg.root, "voc21")).write_classes(["a"], False, "synthetic shapes")
    mine = config(tmp_path, {"voc21": {"urls": urls(server, "voc21")}})
    with pytest.raises(ConfigError, match="was made from 'synthetic shapes', not by "
                                          "data.segmentation_sets; delete it"):
        data.run(mine)


def test_max_images_takes_the_first_keys_in_order(tmp_path, server):
    cfg = config(tmp_path, {"voc20": {"urls": urls(server, "voc20"), "max_images": 1}})
    data.run(cfg)
    assert [s.key for s in SegSet(segset_dir(cfg.root, "voc20")).samples()] == ["2007_000032"]
    assert meta(cfg.root, "voc20")["images"] == 1 and meta(cfg.root, "voc20")["skipped"] == {}


def test_downloadable_kinds_also_come_from_a_path(tmp_path, server, published):
    """A folder holding the archives, the archive itself, or the extracted dataset at any of its
    top folders (and COCO in mmsegmentation's layout) give the same set, with no download."""
    downloaded = clean_install(tmp_path, server)
    extracted = write_folder(tmp_path / "voc", voc_members())
    images, maps = coco_members()
    mmseg = write_folder(tmp_path / "coco_stuff164k", {
        **{f"images/{n}": b for n, b in images.items()},
        **{f"annotations/{n}": b for n, b in maps.items()},
        "annotations/val2017/000000000139_labelTrainIds.png": b"converted, not read"})
    server.requests.clear()
    sources = {"a": str(published), "b": str(published / VOC_TAR), "c": str(extracted),
               "d": str(extracted / "VOCdevkit"), "e": str(extracted / "VOCdevkit" / "VOC2012")}
    sets = {n: {"kind": "voc21", "path": p} for n, p in sources.items()}
    sets["f"] = {"kind": "coco-stuff", "path": str(mmseg)}
    sets["g"] = {"kind": "coco-stuff", "path": str(published)}
    cfg = config(tmp_path, sets)
    data.run(cfg)
    assert server.requests == []
    for name in sources:
        got = tree_bytes(segset_dir(cfg.root, name), skip=("classes.json",))
        assert got == {k: v for k, v in downloaded.items() if k != "classes.json"}, name
    sha = hashlib.sha256((published / VOC_TAR).read_bytes()).hexdigest()
    assert meta(cfg.root, "a")["archives"] == {VOC_TAR: sha} == meta(cfg.root, "b")["archives"]
    assert meta(cfg.root, "c")["archives"] == {}
    assert tree_bytes(segset_dir(cfg.root, "f"), skip=("classes.json",)) == tree_bytes(
        segset_dir(cfg.root, "g"), skip=("classes.json",))
    assert meta(cfg.root, "f")["images"] == 2


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sets, synthetic, message", [
    ('bad = { kind = "voc2012" }', 0,
     r"'data.segmentation_sets.bad.kind' must be one of voc21, voc20, ade20k, coco-stuff, "),
    ("mine = {}", 0, r"'data.segmentation_sets.mine.kind' is empty and 'mine' is not a kind"),
    ("shapes-seg = { kind = 'voc21' }", 2,
     r"'data.segmentation_sets.shapes-seg' segsets/shapes-seg is also the synthetic"),
    ("context59 = {}", 0, r"data.segmentation_sets.context59.path is required: context59 has "
                          r"no public download"),
    ("cityscapes = { path = '/nowhere/at/all' }", 0,
     r"data.segmentation_sets.cityscapes.path: /nowhere/at/all does not exist"),
    ("voc21 = { urls = ['http://a/x.tar', 'http://a/y.tar'] }", 0,
     r"data.segmentation_sets.voc21.urls: voc21 takes 1 \(in this order: "
     r"VOCtrainval_11-May-2012.tar\), got 2"),
    ("coco-object = { urls = ['http://a/x.zip'] }", 0,
     r"coco-object.urls: coco-object takes 2 \(in this order: val2017.zip, "
     r"stuffthingmaps_trainval2017.zip\), got 1"),
    ("voc20 = { urls = ['SERVER/missing.tar'] }", 0,
     r"data.segmentation_sets.voc20: cannot download http://127.0.0.1:\d+/missing.tar: HTTP 404 "
     r"Not Found; download it yourself into .*VOCtrainval_11-May-2012.tar and re-run, or give "
     r"data.segmentation_sets.voc20.path = the folder holding it"),
    ("ade20k = { urls = ['http://127.0.0.1:CLOSED/a.zip'] }", 0,
     r"data.segmentation_sets.ade20k: cannot reach http://127.0.0.1:\d+/a.zip \(.*refused.*\); "
     r"download it yourself"),
])
def test_each_mistake_is_one_line_through_the_cli_before_anything_is_written(
        tmp_path, server, sets, synthetic, message):
    art = tmp_path / "artifacts"
    text = sets.replace("SERVER", server.url).replace("CLOSED", str(closed_port()))
    path = tmp_path / "c.toml"
    path.write_text(f'artifacts = "{art}"\n[data.synthetic]\ntiny_models = false\n'
                    f"num_segmentation = {synthetic}\n[data.segmentation_sets]\n{text}\n")
    proc = run_cli("data", "--config", str(path), check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines()
             if x.strip() and not re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) ", x)]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stderr.rstrip().endswith(lines[0])
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in proc.stderr
    # nothing, or only the set's hidden, empty lock file (store/lock.py keeps it beside it)
    assert [p.name for p in (art / "segsets").glob("[!.]*")] == []


def test_a_full_disk_is_one_line_naming_the_download(tmp_path, server, monkeypatch):
    from dinov2clip.pipeline import os_fault

    class Full:
        def __init__(self, *args, **kwargs):
            self.fh = open(*args, **kwargs)  # noqa: SIM115

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self):
            return self.fh.fileno()

    monkeypatch.setattr(fetch, "open", Full, raising=False)
    cfg = config(tmp_path, {"voc21": {"urls": urls(server, "voc21")}})
    with pytest.raises(OSError) as err:
        data.run(cfg)
    line = os_fault(err.value)
    assert err.value.errno == errno.ENOSPC and "\n" not in line
    assert re.fullmatch(r".*/downloads/segsets/VOCtrainval_11-May-2012.tar.part: No space left "
                        r"on device while downloading http://127.0.0.1:\d+/VOCtrainval_11-May-"
                        r"2012.tar; or download it on another disk and give "
                        r"data.segmentation_sets.voc21.path \(free some space.*\)", line), line


def test_segmentation_set_tables_are_strict_and_settable_from_the_command_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[data.segmentation_sets]\nvoc21 = { url = ['x'] }\n")
    with pytest.raises(ConfigError, match=r"unknown key 'data.segmentation_sets.voc21.url' "
                                          r"\(known: kind, max_images, path, urls\)"):
        load_config(path)
    path.write_text("")
    cfg = load_config(path, ["data.segmentation_sets.voc21.max_images=5",
                             "data.segmentation_sets.ctx.kind='context60'",
                             "data.segmentation_sets.ctx.path='/data/pc'"])
    assert cfg.data.segmentation_sets["voc21"].max_images == 5
    assert cfg.data.segmentation_sets["ctx"].resolved_kind("ctx") == "context60"
    path.write_text("[data.segmentation_sets]\nvoc21 = { max_images = -1 }\n")
    with pytest.raises(ConfigError, match="'data.segmentation_sets.voc21.max_images' must be at "
                                          "least 0"):
        load_config(path)


def test_a_downloaded_voc21_is_scored_by_pipeline_eval(demo_run, tmp_path, server):
    config_path, demo_art = demo_run
    cfg = config(tmp_path, {"voc21": {"urls": urls(server, "voc21")}})
    data.run(cfg)
    run_copy = tmp_path / "run"
    shutil.copytree(demo_art / "runs" / "demo", run_copy)
    (cfg.root / "embeddings").symlink_to(demo_art / "embeddings")  # the retrieval set's
    run_cli("eval", "--config", str(config_path), "--run", str(run_copy),
            "--set", f'artifacts="{cfg.root}"', "--set", "eval.zeroshot=''",
            "--set", "eval.dense.sets=['voc21']",
            "--set", "eval.dense.head='projector'", env={"OMP_NUM_THREADS": "1"})
    from dinov2clip.store import RunDir

    res = json.loads(RunDir(run_copy).segmentation_results("voc21", "projector").read_text())
    assert res["set"] == "voc21" and res["n_images"] == 2
    assert res["classes"] == list(KINDS["voc21"].classes)
    assert res["published"]["talk2dino_vitb"] == 61.5
    assert "unverified" in res["published"]["source"] and res["published"]["images"] == 1449
    report = RunDir(run_copy).report.read_text()  # 2 of VOC's 1449 images: marked, explained
    assert "| voc21 | projector | 2 |" in report and "| 61.5* |" in report
    assert "\\* scored here on fewer images than the published split" in report
    assert res["prompted_as"] == {"diningtable": "table", "pottedplant": "plant",
                                  "tvmonitor": "monitor"}
    assert 0.0 <= res["mIoU"] <= 100.0


def test_the_published_number_follows_the_sets_kind_not_its_name(tmp_path):
    """A set installed under any name is compared with its benchmark's published number."""
    from dinov2clip.evaluate.segmentation import published_for
    from dinov2clip.formats.segsets import SegSet

    seg = SegSet(tmp_path / "my-ade")
    seg.write_classes(list(KINDS["ade20k"].classes), False, source={}, kind="ade20k")
    assert published_for(seg, "my-ade")["talk2dino_vitb"] == 21.1
    shapes = SegSet(tmp_path / "voc20")  # a set not from data.segmentation_sets: by its name
    shapes.write_classes(["a", "b"], False, source="synthetic")
    assert published_for(shapes, "voc20")["talk2dino_vitb"] == 87.1
    assert published_for(SegSet(tmp_path / "shapes-seg"), "shapes-seg")["talk2dino_vitb"] is None


def test_a_sets_prompt_names_are_read_checked_and_default_to_its_classes(tmp_path):
    from dinov2clip.formats.segsets import SegSet

    seg = SegSet(tmp_path / "s")
    seg.write_classes(["background", "diningtable"], True, source={})
    assert seg.read_prompts() == ["background", "diningtable"]  # a set from before prompts
    seg.write_classes(["background", "diningtable"], True, source={},
                      prompts=["background", "table"])
    assert seg.read_prompts() == ["background", "table"]
    seg.write_classes(["background", "diningtable"], True, source={}, prompts=["table"])
    with pytest.raises(ConfigError, match="'prompts' must name each of the 2 classes"):
        seg.read_prompts()


@pytest.mark.parametrize("held", ["set", "archive"])
def test_a_second_install_meets_the_first_ones_lock(tmp_path, server, held, monkeypatch):
    """Two data stages at once: voc20 and voc21 share the VOC tar, and two writers appending to
    one .part would make a corrupt archive. The second stops in one line, or with --wait waits
    and then finds the work done."""
    from dinov2clip.store import WriterLock
    from tests.test_store_lock import wait_hook

    cfg = config(tmp_path, {"voc21": {"urls": urls(server, "voc21")}})
    target = (segset_dir(cfg.root, "voc21") if held == "set" else
              cfg.root / "downloads" / "segsets" / VOC_TAR)
    holder = WriterLock(target, command="data").acquire()
    with pytest.raises(ConfigError, match=rf"{re.escape(str(target))} is being written by "
                                          r".*`pipeline data --wait`"):
        data.run(cfg)
    assert not (segset_dir(cfg.root, "voc21") / "classes.json").exists()
    assert not gets(server, f"/{VOC_TAR}")  # nothing downloaded behind the lock
    waits = wait_hook(monkeypatch, holder)  # the holder finishes while we wait
    data.run(cfg, wait=True)
    assert waits == [True] and meta(cfg.root, "voc21")["kind"] == "voc21"


def test_a_member_the_archive_cannot_give_back_is_skipped_and_counted(tmp_path, caplog):
    """A zip whose bytes were damaged after it was written (a bad disk, a bad copy): the
    member that fails its CRC is one counted skip with a warning to fetch the archive again,
    not zipfile's traceback; the rest of the set installs."""
    import zipfile

    from tests.segsets_fakes import write_zip

    (tmp_path / "src").mkdir()
    archive = write_zip(tmp_path / "src" / ADE_ZIP, ade_members())
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("ADEChallengeData2016/images/validation/ADE_val_00000001.jpg")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw = bytearray(archive.read_bytes())
    raw[start + 100:start + 120] = b"x" * 20  # inside that JPEG's stored bytes
    archive.write_bytes(bytes(raw))
    cfg = config(tmp_path, {"ade20k": {"path": str(archive)}})
    with caplog.at_level(logging.WARNING):
        data.run(cfg)
    m = meta(cfg.root, "ade20k")
    assert m["images"] == len(ADE_LABELS) - 1 and m["skipped"] == {"damaged_in_archive": 1}
    assert "ADE_val_00000001.jpg" in caplog.text and "fetch it again" in caplog.text


def test_a_split_list_that_cannot_be_read_is_one_line(tmp_path, monkeypatch):
    from dinov2clip.data.segmentation import archives

    root = write_folder(tmp_path / "voc", voc_members())
    real = archives.FolderTree._read

    def failing(self, name):
        if name.endswith("ImageSets/Segmentation/val.txt"):
            raise OSError(5, "Input/output error")
        return real(self, name)

    monkeypatch.setattr(archives.FolderTree, "_read", failing)
    cfg = config(tmp_path, {"voc21": {"path": str(root)}})
    with pytest.raises(ConfigError, match=r"data.segmentation_sets.voc21: cannot read the split "
                                          r"list .*val.txt \(\[Errno 5\] Input/output error\)"):
        data.run(cfg)


def test_a_file_that_is_no_archive_is_one_line_through_the_cli(tmp_path):
    junk = tmp_path / "VOCtrainval_11-May-2012.tar"
    junk.write_bytes(bytes(range(256)) * 20)  # neither zip nor tar: tarfile tries four ways
    path = tmp_path / "c.toml"
    path.write_text(f'artifacts = "{tmp_path / "art"}"\n[data.synthetic]\ntiny_models = false\n'
                    f'[data.segmentation_sets]\nvoc21 = {{ path = "{junk}" }}\n')
    proc = run_cli("data", "--config", str(path), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"error: data.segmentation_sets.voc21: {junk} is not a readable zip "
                           "or tar (") and last.endswith("fetch it again"), proc.stderr
