"""download_models.py up to the network boundary: the one fetch function is replaced by a fake hub."""

import dataclasses
import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("download_models", REPO_ROOT / "download_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


dm = load_script()

# The default set in A1111's layout as the brief spells it out (not read back from the manifest).
EXPECTED_DEFAULT_FILES = [
    "Stable-diffusion/v1-5-pruned-emaonly.safetensors",
    "Stable-diffusion/sd_xl_base_1.0.safetensors",
    "adetailer/face_yolov8n.pt",
    "RealESRGAN/RealESRGAN_x4plus.pth",
    "insightface/models/antelopev2/scrfd_10g_bnkps.onnx",
    "insightface/models/antelopev2/glintr100.onnx",
    "ControlNet/ip-adapter_instant_id_sdxl.bin",
    "ControlNet/control_instant_id_sdxl.safetensors",
]
TOKENIZER = ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
SD15_CONFIG = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
               *(f"tokenizer/{name}" for name in TOKENIZER), "unet/config.json", "vae/config.json"]
SDXL_CONFIG = [*SD15_CONFIG, "text_encoder_2/config.json", *(f"tokenizer_2/{name}" for name in TOKENIZER)]


def content_of(repo_id: str, filename: str) -> bytes:
    """What the fake hub serves for a file: deterministic, distinct per file, a few kB."""
    return hashlib.sha256(f"{repo_id}:{filename}".encode()).digest() * 100


class FakeHub:
    """Stands in for `fetch_from_hub`: writes the file into the staging folder it is given.

    Like huggingface_hub with `local_dir`, it continues from a partial file already at the staging path.
    """

    def __init__(self, serve=content_of):
        self.serve = serve
        self.calls: list[str] = []
        self.resumed_from: dict[str, int] = {}

    def __call__(self, item, staging: Path) -> Path:
        self.calls.append(item.name)
        data = self.serve(item.repo_id, item.filename)
        path = staging / item.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = path.read_bytes() if path.exists() else b""
        if existing and data.startswith(existing):
            self.resumed_from[item.name] = len(existing)
            path.write_bytes(existing + data[len(existing):])
        else:
            path.write_bytes(data)
        return path


def unverified(manifest):
    """The real manifest without sizes and checksums, which the fake hub's bytes cannot match."""
    return [dataclasses.replace(item, size=None, sha256=None) for item in manifest]


def small_item(name="alpha", **changes):
    data = content_of("org/repo", f"{name}.pt")
    fields = {"name": name, "kind": "detector", "repo_id": "org/repo", "filename": f"{name}.pt",
              "dest": f"adetailer/{name}.pt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return dm.Item(**{**fields, **changes})


def run(root: Path, *args: str, fetch=None, manifest=None) -> int:
    return dm.main(["--models", str(root), *args], fetch=fetch or FakeHub(), manifest=manifest or dm.MANIFEST)


def no_network(item, staging):
    raise AssertionError(f"fetch called for {item.name}")


def test_manifest_rows_are_unique_relative_and_plausible():
    names = [item.name for item in dm.MANIFEST]
    dests = [item.dest for item in dm.MANIFEST]
    assert len(set(names)) == len(names)
    assert len(set(dests)) == len(dests)
    for item in dm.MANIFEST:
        assert not Path(item.dest).is_absolute()
        assert ".." not in Path(item.dest).parts
        assert item.repo_id.count("/") == 1
        assert item.sha256 is None or (len(item.sha256) == 64 and int(item.sha256, 16) >= 0)
        assert item.size is None or item.size > 0
        assert item.revision is None or len(item.revision) == 40


def test_default_set_fills_the_a1111_layout(tmp_path):
    hub = FakeHub()
    assert run(tmp_path, fetch=hub, manifest=unverified(dm.MANIFEST)) == 0

    expected = [*EXPECTED_DEFAULT_FILES, *(f"configs/sd15/{f}" for f in SD15_CONFIG),
                *(f"configs/sdxl/{f}" for f in SDXL_CONFIG)]
    for relative in expected:
        assert (tmp_path / relative).is_file(), relative
    # The right source landed at each place (the fake serves distinct bytes per repo file).
    assert (tmp_path / "ControlNet/control_instant_id_sdxl.safetensors").read_bytes() == content_of(
        "InstantX/InstantID", "ControlNetModel/diffusion_pytorch_model.safetensors")
    assert (tmp_path / "configs/sdxl/tokenizer_2/vocab.json").read_bytes() == content_of(
        "stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2/vocab.json")
    # Only default rows were fetched, each once, and the staging area is gone.
    assert sorted(hub.calls) == sorted(item.name for item in dm.MANIFEST if item.default)
    assert not (tmp_path / dm.STAGING_DIR).exists()


def test_catalog_finds_what_was_downloaded(tmp_path):
    from engine.resources.catalog import ModelCatalog

    assert run(tmp_path, manifest=unverified(dm.MANIFEST)) == 0
    catalog = ModelCatalog(tmp_path)
    assert {entry.name for entry in catalog.checkpoints()} == {
        "v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"}
    assert catalog.find_file("adetailer", "face_yolov8n.pt").path == tmp_path / "adetailer/face_yolov8n.pt"
    assert catalog.find_file("realesrgan", "RealESRGAN_x4plus").path.name == "RealESRGAN_x4plus.pth"
    assert {entry.name for entry in catalog.controlnets()} == {
        "ip-adapter_instant_id_sdxl", "control_instant_id_sdxl"}
    assert [entry.name for entry in catalog.entries("insightface")] == ["models/antelopev2"]


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sdxl_refiner"])
def test_config_folders_hold_what_the_demo_config_folder_holds(family, tmp_path):
    # The demo's config folders are proven loadable by from_single_file(config=..., local_files_only=True).
    from engine.demo.tiny import tiny_components, write_config_folder

    folder = write_config_folder(tiny_components(family), tmp_path / family)
    needed = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    fetched = {item.filename for item in dm.MANIFEST if f"{family}-config" in item.groups}
    assert fetched == needed


def test_refiner_is_fetched_on_request_into_the_a1111_layout(tmp_path):
    hub = FakeHub()
    assert not any(item.default for item in dm.MANIFEST if "sdxl_refiner" in item.groups)
    assert run(tmp_path, "--only", "sdxl_refiner", fetch=hub, manifest=unverified(dm.MANIFEST)) == 0
    refiner_config = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder_2/config.json",
                      *(f"tokenizer_2/{name}" for name in TOKENIZER), "unet/config.json", "vae/config.json"]
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file()) == sorted(
        ["Stable-diffusion/sd_xl_refiner_1.0.safetensors", *(f"configs/sdxl_refiner/{f}" for f in refiner_config)]
    )


def test_list_shows_sizes_and_presence_without_fetching(tmp_path, capsys):
    assert run(tmp_path, "--list", fetch=no_network) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "6.9 GB" in rows["sdxl-checkpoint"]  # 6 938 078 334 bytes
    assert "missing" in rows["sdxl-checkpoint"]
    assert "antelopev2-genderage" in rows  # non-default rows are listed too

    manifest = [small_item("alpha"), small_item("beta")]
    assert run(tmp_path, "--only", "alpha", manifest=manifest) == 0
    capsys.readouterr()
    assert run(tmp_path, "--list", fetch=no_network, manifest=manifest) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert " present " in rows["alpha"]
    assert " missing " in rows["beta"]


def test_only_accepts_item_and_group_names(tmp_path):
    hub = FakeHub()
    assert run(tmp_path, "--only", "face_yolov8n, sd15", fetch=hub, manifest=unverified(dm.MANIFEST)) == 0
    expected = ["face_yolov8n", "sd15-checkpoint", *(f"sd15-config/{f}" for f in SD15_CONFIG)]
    assert sorted(hub.calls) == sorted(expected)
    assert (tmp_path / "adetailer/face_yolov8n.pt").is_file()
    assert not (tmp_path / "Stable-diffusion/sd_xl_base_1.0.safetensors").exists()


def test_only_none_fetches_nothing(tmp_path):
    assert run(tmp_path, "--only", "none", fetch=no_network) == 0


def test_unknown_name_is_a_one_line_error_listing_valid_names(tmp_path, capsys):
    assert run(tmp_path, "--only", "face_yolov8n,sdxxl", fetch=no_network) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "sdxxl" in err
    for valid in ("default", "sdxl", "instantid", "face_yolov8n", "RealESRGAN_x4plus"):
        assert valid in err
    assert list(tmp_path.iterdir()) == []


def test_second_run_fetches_nothing(tmp_path):
    manifest = [small_item("alpha"), small_item("beta", size=None, sha256=None)]
    assert run(tmp_path, manifest=manifest) == 0
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    hub = FakeHub()
    assert run(tmp_path, fetch=hub, manifest=manifest) == 0
    assert hub.calls == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps


def test_truncated_file_in_place_is_not_taken_for_complete(tmp_path, capsys):
    item = small_item("alpha")
    dest = tmp_path / item.dest
    dest.parent.mkdir(parents=True)
    dest.write_bytes(content_of(item.repo_id, item.filename)[:100])  # e.g. an interrupted copy
    assert run(tmp_path, "--list", fetch=no_network, manifest=[item]) == 0
    assert "incomplete" in capsys.readouterr().out

    hub = FakeHub()
    assert run(tmp_path, fetch=hub, manifest=[item]) == 0
    assert hub.calls == ["alpha"]
    assert dest.read_bytes() == content_of(item.repo_id, item.filename)


def test_partial_download_is_resumed_and_only_then_put_in_place(tmp_path, capsys):
    item = small_item("alpha")
    data = content_of(item.repo_id, item.filename)
    partial = tmp_path / dm.STAGING_DIR / "org--repo" / item.filename
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:1000])
    assert run(tmp_path, "--list", fetch=no_network, manifest=[item]) == 0
    assert "missing" in capsys.readouterr().out  # a partial download is not the model

    hub = FakeHub()
    assert run(tmp_path, fetch=hub, manifest=[item]) == 0
    assert hub.resumed_from == {"alpha": 1000}  # the same staging path is offered again
    assert (tmp_path / item.dest).read_bytes() == data
    assert not partial.exists()


@pytest.mark.parametrize(("changes", "words"), [
    ({"sha256": hashlib.sha256(b"other bytes").hexdigest()}, "sha256 mismatch"),
    ({"size": 123}, "expected 123"),
])
def test_bad_download_is_a_clear_error_and_leaves_nothing_in_place(tmp_path, capsys, changes, words):
    item = small_item("alpha", **changes)
    assert run(tmp_path, manifest=[item]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "alpha" in err
    assert words in err
    assert not (tmp_path / item.dest).exists()
    assert not any(path.is_file() for path in (tmp_path / dm.STAGING_DIR).rglob("*"))


def test_fetch_failure_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def failing(item, staging):
        raise ConnectionError("connection reset\nlong traceback text")

    manifest = [small_item("alpha"), small_item("beta")]
    assert run(tmp_path, fetch=failing, manifest=manifest) == 1
    err = capsys.readouterr().err
    assert err == "error: alpha: cannot fetch org/repo:alpha.pt: ConnectionError: connection reset\n"
    assert not (tmp_path / "adetailer").exists()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set for run time in the image; the error says so
    assert run(tmp_path, fetch=failing, manifest=manifest) == 1
    assert capsys.readouterr().err.rstrip().endswith("(HF_HUB_OFFLINE is set)")


def test_models_folder_defaults_to_env_then_beside_the_script(monkeypatch):
    monkeypatch.setenv("MODELS_DIR", "/somewhere/models")
    assert dm.parse_args([]).models == Path("/somewhere/models")
    monkeypatch.delenv("MODELS_DIR")
    assert dm.parse_args([]).models == REPO_ROOT / "models"


def test_hub_fetch_downloads_into_staging_with_the_token(monkeypatch, tmp_path):
    import huggingface_hub

    seen = {}

    def fake_hf_hub_download(repo_id, filename, **kwargs):
        seen.update(repo_id=repo_id, filename=filename, **kwargs)
        path = Path(kwargs["local_dir"]) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    item = next(item for item in dm.MANIFEST if item.name == "face_yolov8n")
    path = dm.fetch_from_hub(item, tmp_path)
    assert path == tmp_path / "face_yolov8n.pt"
    assert seen == {"repo_id": "Bingsu/adetailer", "filename": "face_yolov8n.pt", "revision": item.revision,
                    "repo_type": None, "local_dir": tmp_path, "token": "hf_test"}
    # Depth Anything V1's checkpoint lives in a Space, where sd-webui-controlnet downloads it from.
    space_item = next(item for item in dm.MANIFEST if item.name.endswith("depth_anything_vitl14.pth"))
    dm.fetch_from_hub(space_item, tmp_path)
    assert (seen["repo_id"], seen["repo_type"]) == ("LiheYoung/Depth-Anything", "space")


def test_an_annotator_file_two_annotators_share_is_in_both_groups():
    detector = [item for item in dm.MANIFEST if item.dest == "ControlNetAnnotators/openpose/yolox_l.onnx"]
    assert len(detector) == 1
    assert {"annotator-dwpose", "annotator-animal_pose", "annotators"} <= set(detector[0].groups)
    assert [item.name for item in dm.select(dm.MANIFEST, "annotator-dwpose")] == [
        "annotator-openpose/yolox_l.onnx", "annotator-openpose/dw-ll_ucoco_384.onnx"]


def test_every_annotator_the_worker_loads_has_its_files_in_a_group():
    """The worker's "not found" error names `annotator-<name>`: that group must fetch exactly the files it checks."""
    from engine.control.maps.annotators import ANNOTATORS

    for name, annotator in ANNOTATORS.items():
        items = dm.select(dm.MANIFEST, f"annotator-{name}")
        assert {item.dest for item in items} == {f"ControlNetAnnotators/{annotator.folder}/{file}"
                                                 for file in annotator.files}, name


def test_oneformer_folders_come_from_shi_labs_transformers_repositories():
    items = dm.select(dm.MANIFEST, "annotator-oneformer_ade20k")
    assert {item.repo_id for item in items} == {"shi-labs/oneformer_ade20k_swin_large"}
    assert "pytorch_model.bin" in {item.filename for item in items}
    assert not any(item.filename.endswith("oneformer_ade20k_160k.pth") for item in items)  # the detectron2 copy


def test_demo_files_are_never_taken_for_real_ones(tmp_path, capsys):
    """After `demo-models`, a real download replaces the random-weight file of the same name."""
    from engine.demo.models import DEMO_MARKER, write_demo_models

    assert DEMO_MARKER == dm.DEMO_MARKER
    write_demo_models(tmp_path)
    glintr = next(item for item in dm.MANIFEST if item.name == "antelopev2-recognition")
    assert (tmp_path / glintr.dest).is_file()  # the demo wrote a file of that name
    assert dm.status(glintr, tmp_path) == "demo"
    assert run(tmp_path, "--list", fetch=no_network) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert " demo " in rows["antelopev2-recognition"] and " demo " in rows["face_yolov8n"]

    # A real download of one item puts it in place and it is a demo file no more; the others stay listed.
    real = dataclasses.replace(small_item("glintr"), dest=glintr.dest)
    assert run(tmp_path, "--only", "glintr", manifest=[real]) == 0
    assert dm.status(real, tmp_path) == "present"
    assert glintr.dest not in dm.demo_files(tmp_path) and "adetailer/face_yolov8n.pt" in dm.demo_files(tmp_path)


def test_a_file_of_unknown_size_is_checked_by_its_checksum(tmp_path):
    item = dataclasses.replace(small_item("alpha"), size=None)
    path = tmp_path / item.dest
    path.parent.mkdir(parents=True)
    path.write_bytes(b"some other file of the same name")
    assert dm.status(item, tmp_path) == "incomplete"
    path.write_bytes(content_of(item.repo_id, item.filename))
    assert dm.status(item, tmp_path) == "present"


def test_face_restoration_files_land_where_a1111_keeps_them(tmp_path):
    from engine.resources.catalog import ModelCatalog
    from engine.restore.registry import FaceRestorers

    assert run(tmp_path, "--only", "face-restoration", manifest=unverified(dm.MANIFEST)) == 0
    for relative in ("Codeformer/codeformer-v0.1.0.pth", "GFPGAN/GFPGANv1.4.pth",
                     "GFPGAN/detection_Resnet50_Final.pth", "GFPGAN/parsing_parsenet.pth"):
        assert (tmp_path / relative).is_file(), relative
    restorers = FaceRestorers(ModelCatalog(tmp_path), "cpu")
    assert restorers.installed() == ["CodeFormer", "GFPGAN"]
    # Each restorer's group brings the face detector and parser with it; none is in the default set.
    assert {item.name for item in dm.select(dm.MANIFEST, "gfpgan")} == {
        "GFPGANv1.4", "facexlib-detection", "facexlib-parsing"}
    assert not any(item.default for item in dm.select(dm.MANIFEST, "face-restoration"))


def test_release_files_come_from_a1111s_urls():
    urls = {item.name: item.url for item in dm.MANIFEST if "face-restoration" in item.groups}
    assert urls == {
        "codeformer-v0.1.0": "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
        "GFPGANv1.4": "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
        "facexlib-detection":
            "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
        "facexlib-parsing": "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
    }


def test_url_fetch_downloads_into_staging_and_restarts_when_ranges_are_not_served(tmp_path):
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "weights.pth").write_bytes(b"0123456789" * 1000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=served)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/weights.pth"
        item = small_item("weights", filename="weights.pth", url=url, size=10_000)
        staging = tmp_path / "staging"
        staging.mkdir()
        (staging / "weights.pth").write_bytes(b"stale")  # this server ignores Range: start over
        path = dm.fetch(item, staging)
    finally:
        server.shutdown()
    assert path.read_bytes() == b"0123456789" * 1000


def zip_of(files: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def reactor_hub(buffalo_members: dict[str, bytes]):
    return FakeHub(lambda repo, file: zip_of(buffalo_members) if file == "buffalo_l.zip" else content_of(repo, file))


def test_reactor_models_land_where_reactor_looks(tmp_path):
    """`--only reactor`: the swap model loose in insightface/, the buffalo_l zip unpacked (from any folder inside
    it) into insightface/models/buffalo_l without the archive, the face mask parser in GFPGAN/ (where A1111's
    facexlib keeps it); a second run fetches nothing."""
    from engine.resources.catalog import ModelCatalog

    members = {f"buffalo_l/{name}": name.encode() for name in dm.BUFFALO_L_FILES}
    hub = reactor_hub(members)
    manifest = unverified(dm.MANIFEST)
    assert run(tmp_path, "--only", "reactor", fetch=hub, manifest=manifest) == 0
    assert sorted(hub.calls) == ["buffalo_l", "facexlib-bisenet", "inswapper_128"]
    assert (tmp_path / "GFPGAN/parsing_bisenet.pth").is_file()
    folder = tmp_path / "insightface/models/buffalo_l"
    assert sorted(path.name for path in folder.iterdir()) == sorted(dm.BUFFALO_L_FILES)
    assert (folder / "genderage.onnx").read_bytes() == b"genderage.onnx"
    assert (tmp_path / "insightface/inswapper_128.onnx").read_bytes() == content_of(
        "Gourieff/ReActor", "models/inswapper_128.onnx")
    names = [entry.name for entry in ModelCatalog(tmp_path).entries("insightface")]
    assert names == ["inswapper_128.onnx", "models/buffalo_l"]
    assert run(tmp_path, "--only", "reactor", fetch=no_network, manifest=manifest) == 0


def test_zip_without_a_member_is_a_clear_error(tmp_path, capsys):
    hub = reactor_hub({"det_10g.onnx": b"d"})
    assert run(tmp_path, "--only", "buffalo_l", fetch=hub) != 0
    assert "buffalo_l: buffalo_l.zip has no w600k_r50.onnx" in capsys.readouterr().err
    assert not (tmp_path / "insightface/models/buffalo_l/w600k_r50.onnx").exists()


def test_demo_buffalo_l_is_replaced_by_the_real_pack(tmp_path):
    from engine.faceswap.demo import write_tiny_reactor_models

    write_tiny_reactor_models(tmp_path)
    from engine.demo.models import _record_demo_files

    _record_demo_files(tmp_path, list((tmp_path / "insightface").rglob("*.onnx")))
    buffalo = next(item for item in dm.MANIFEST if item.name == "buffalo_l")
    assert dm.status(buffalo, tmp_path) == "missing"  # the demo pack has no landmark models
    members = {name: name.encode() for name in dm.BUFFALO_L_FILES}
    assert run(tmp_path, "--only", "buffalo_l", fetch=reactor_hub(members)) == 0
    assert dm.status(buffalo, tmp_path) == "present"
    assert not any(name.startswith("insightface/models/buffalo_l") for name in dm.demo_files(tmp_path))


def test_buffalo_l_comes_from_the_release_insightface_downloads():
    buffalo = next(item for item in dm.MANIFEST if item.name == "buffalo_l")
    assert buffalo.url == "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"


def test_fetched_detectors_are_listed_as_trusted_pickles(tmp_path):
    # The list the worker's TRUSTED_PICKLES=1 reads: the manifest's sha256 of each pickled detector fetched,
    # an operator's own lines kept.
    listed = tmp_path / dm.TRUSTED_PICKLES_FILE
    tmp_path.mkdir(exist_ok=True)
    listed.write_text("# mine\n" + "ab" * 32 + "  adetailer/mine.pt\n")
    item, other = small_item("alpha"), small_item("beta", kind="upscaler", dest="ESRGAN/beta.pt")
    assert run(tmp_path, "--only", "alpha,beta", manifest=[item, other]) == 0
    assert listed.read_text().splitlines() == ["# mine", "ab" * 32 + "  adetailer/mine.pt",
                                               f"{item.sha256}  adetailer/alpha.pt"]
    stamp = listed.stat().st_mtime_ns
    assert run(tmp_path, "--only", "alpha", fetch=no_network, manifest=[item, other]) == 0
    assert listed.stat().st_mtime_ns == stamp  # nothing new: the list is not rewritten


def test_mediapipe_group_fetches_the_files_adetailers_mediapipe_models_need(tmp_path):
    """`--only mediapipe` covers every file the four `mediapipe_face_*` models read, where the worker looks
    for them; the two detectors are pinned to the generation and sha256 mediapipe's build lists."""
    from engine.detailer.mediapipe import MEDIAPIPE_MODELS, mediapipe_model_file

    items = [item for item in dm.MANIFEST if "mediapipe" in item.groups]
    assert sorted(item.dest for item in items) == sorted({f"mediapipe/{m.file}" for m in MEDIAPIPE_MODELS.values()})
    detectors = [item for item in items if item.dest.endswith(".tflite")]
    assert all(item.sha256 and "generation=" in item.url for item in detectors)

    hub = FakeHub()
    assert run(tmp_path, "--only", "mediapipe-face-landmarker", fetch=hub) == 0
    assert hub.calls == ["mediapipe-face-landmarker"]
    found = mediapipe_model_file(tmp_path, "mediapipe_face_mesh", "ad_model")
    assert found.read_bytes() == content_of("google-ai-edge/mediapipe", "face_landmarker.task")
