"""Test-time augmentation (the flip average): chosen on validation by `export --tta`,
recorded in config.json, applied alike by `predict`, `evaluate`, ONNX and torch.export.

The fast tests use a real export (every file, written by ``export``'s own code path) of
Lite0 at 40 px with its ImageNet weights and a random head (a randomly initialised Lite0
answers every photo alike): its centre crop (46 -> 40 px) takes as many columns
from each side, so mirroring the photo and mirroring the crop are the same thing. The
photos are real flower photos, made square PNGs of the export's resize size (46 px) so that
no step of the preparation treats left and right differently.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image, ImageOps

import trainables

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")

MODEL = "efficientnet_lite0"
SIZE = 40
CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def write_export(output: Path, tta: str) -> Path:
    """A real export of Lite0 at 40 px (ImageNet weights, random head) with test-time
    augmentation ``tta`` forced, as `export --tta TTA` writes it."""
    from tuner.results._export import MODEL_STATE, PREPROCESSING, _write_export
    from tuner.results._inference import Preprocessing
    from tuner.results._tta import TtaChoice

    torch.manual_seed(0)
    net = trainables.build_model(MODEL, len(CLASSES), pretrained=True, image_size=SIZE).eval()
    prep = Preprocessing.for_model(MODEL, SIZE)
    config = {"model": MODEL, **prep.to_dict(), "preprocessing": PREPROCESSING, "num_classes": 5}
    _write_export(
        output,
        net,
        prep,
        CLASSES,
        config,
        {MODEL_STATE: net},
        tta=TtaChoice(mode=tta, requested=tta),
    )
    return output


@pytest.fixture(scope="module")
def flip_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_export(tmp_path_factory.mktemp("tta") / "flip", "flip")


def retagged(export: Path, dest: Path, **change: object) -> Path:
    """A copy of ``export``'s model.pt, labels and config with config.json changed (a value
    of ``...`` deletes the key): what predict reads without --trust-model."""
    dest.mkdir()
    for name in ("model.pt", "labels.json"):
        shutil.copy2(export / name, dest / name)
    config = json.loads((export / "config.json").read_text())
    for key, value in change.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture(scope="module")
def photos(flowers: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """Real photos (one per class) as square PNGs of the resize size, with mirrored copies."""
    resize = trainables.resize_for(SIZE)
    assert (resize - SIZE) % 2 == 0  # the centre crop is symmetric
    folder = tmp_path_factory.mktemp("photos")
    pairs = []
    for name in CLASSES:
        source = sorted((flowers / name).glob("*.jpg"))[110]
        with Image.open(source) as img:
            square = ImageOps.fit(img.convert("RGB"), (resize, resize))
        plain, mirror = folder / f"{name}.png", folder / f"{name}-mirrored.png"
        square.save(plain)
        ImageOps.mirror(square).save(mirror)
        pairs.append((plain, mirror))
    return pairs


def probabilities(folder: Path, paths: list[Path], *extra: str) -> torch.Tensor:
    """`predict --json`'s probabilities (rows: photos, columns: CLASSES)."""
    code, out, err = run_cli("predict", str(folder), *map(str, paths), "--json", "--top", "5",
                             *extra)  # fmt: skip
    assert code == 0, err[-2000:]
    rows = [{p["class"]: p["probability"] for p in r["predictions"]}
            for r in json.loads(out)["results"]]  # fmt: skip
    return torch.tensor([[row[c] for c in CLASSES] for row in rows])


@pytest.mark.slow
def test_a_flip_export_predicts_the_mean_of_the_photo_and_its_mirror(flip_export, photos, tmp_path):
    plain = retagged(flip_export, tmp_path / "plain", tta="none")
    originals, mirrors = [p for p, _ in photos], [m for _, m in photos]
    flipped = probabilities(flip_export, originals)
    alone, mirrored = probabilities(plain, originals), probabilities(plain, mirrors)
    assert (alone - mirrored).abs().max() > 1e-3  # the model tells a photo from its mirror
    assert torch.allclose(flipped, (alone + mirrored) / 2, atol=1e-5)
    assert torch.allclose(probabilities(flip_export, mirrors), flipped, atol=1e-5)
    # --trust-model runs model.ts, which holds the flip average itself.
    assert torch.allclose(probabilities(flip_export, originals, "--trust-model"), flipped,
                          atol=1e-4)  # fmt: skip


@pytest.mark.slow
def test_onnx_and_torch_export_of_a_flip_export_answer_like_predict(
    flip_export, photos, flowers, tmp_path
):
    """The README snippet, unchanged, in a fresh Python that imports nothing of this project."""
    from test_export import ONNX_LINES, PROGRAM_LINES, RUN_SNIPPET, readme_snippet

    config = json.loads((flip_export / "config.json").read_text())
    assert config["tta"] == "flip" and "mirror" in config["deploy"]["output"]["values"]
    jpeg = sorted((flowers / "roses").glob("*.jpg"))[111]  # a photo as users have them
    paths = [photos[0][0], photos[3][1], jpeg]
    expected = probabilities(flip_export, paths)
    snippet = readme_snippet()
    assert ONNX_LINES in snippet
    variants = [snippet, snippet.replace(ONNX_LINES, PROGRAM_LINES)]
    ran = subprocess.run(
        [sys.executable, "-c", RUN_SNIPPET, json.dumps(variants), str(flip_export),
         json.dumps([str(p) for p in paths])],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    answers = [json.loads(line) for line in ran.stdout.splitlines()]
    got = torch.tensor([[a[c] for c in CLASSES] for a in answers])
    assert got.shape == (len(variants) * len(paths), len(CLASSES))
    assert torch.allclose(got, expected.repeat(len(variants), 1), atol=1e-4)


@pytest.mark.slow
def test_an_export_without_the_key_predicts_the_plain_model(flip_export, photos, tmp_path):
    """Exports written before `--tta` existed (no key) predict as they always did."""
    from efficientnet_lite_pytorch import EfficientNet

    old = retagged(flip_export, tmp_path / "old", tta=..., tta_choice=...)
    paths = [p for p, _ in photos]
    got = probabilities(old, paths)
    stock = EfficientNet.from_name("efficientnet-lite0", num_classes=5, image_size=SIZE).eval()
    stock.load_state_dict(torch.load(old / "model.pt", weights_only=True), strict=True)
    mean, std = trainables.normalization(MODEL)
    crop = trainables.eval_transform(SIZE)
    resize = trainables.resize_for(SIZE)
    pixels = torch.stack([
        crop(torch.tensor(trainables.resize_center_crop(trainables.load_photo(p, resize), resize)))
        for p in paths
    ])  # fmt: skip
    with torch.no_grad():
        want = stock(trainables.normalize(pixels, mean, std, torch.float32)).softmax(1)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(probabilities(retagged(old, tmp_path / "none", tta="none"), paths), got)


@pytest.mark.slow  # builds an export (ONNX, torch.export) first
@pytest.mark.parametrize("value", ["rotate", "Flip", 1, None, ["flip"], True])
def test_a_tta_predict_cannot_apply_exits_2_with_one_line(flip_export, photos, tmp_path, value):
    folder = retagged(flip_export, tmp_path / "bad", tta=value)
    code, out, err = run_cli("predict", str(folder), str(photos[0][0]))
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "is not a usable export: tta " in err and "'none', 'flip'" in err


class _Pixels(torch.nn.Module):
    """A model that reads every pixel where it lies (so left and right differ)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(3 * SIZE * SIZE, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(len(x), -1))


@pytest.mark.parametrize("truth", ["flip", "none"])
def test_auto_keeps_the_flip_only_where_it_raises_val_accuracy(flowers, truth):
    """Labels made the flip-averaged model's answers (flip must win) or the plain model's
    (the flip must lose); a model blind to the mirror (a tie) keeps none."""
    from types import SimpleNamespace

    from tuner.results._inference import Preprocessing, classify
    from tuner.results._tta import FlipAverage, choose_tta

    prep = Preprocessing.for_model(MODEL, SIZE)
    files = [str(p.relative_to(flowers)) for p in sorted(flowers.glob("*/*.jpg"))[:40:2]]
    model = _Pixels().eval()
    judge = FlipAverage(model) if truth == "flip" else model
    labels = classify(judge, [flowers / f for f in files], prep).logits.argmax(1).tolist()
    from trainables import PhotoSource

    split = SimpleNamespace(
        root=PhotoSource.parse(flowers), val=list(zip(files, labels, strict=True))
    )
    choice = choose_tta("auto", model, split, prep)
    assert choice.n_val == len(files)
    assert choice.mode == truth
    right, wrong = (choice.val_acc_flip, choice.val_acc_none)[:: 1 if truth == "flip" else -1]
    assert right == 1.0 and wrong is not None and wrong < 1.0
    assert choice.to_config()["tta_choice"]["val_acc"] == {
        "none": choice.val_acc_none, "flip": choice.val_acc_flip
    }  # fmt: skip
    assert f"{choice.val_acc_none:.4f} without, {choice.val_acc_flip:.4f} with" in choice.line()

    blind = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(3, len(CLASSES)))  # fmt: skip
    tie = choose_tta("auto", blind.eval(), split, prep)
    assert tie.val_acc_none == tie.val_acc_flip and tie.mode == "none"
    assert choose_tta("flip", model, split, prep).to_config() == {
        "tta": "flip", "tta_choice": {"requested": "flip"}
    }  # fmt: skip


# Slow lane: the shared real search (conftest marks tests that use `finished`).


def export_with(storage: Path, out: Path, tta: str) -> str:
    code, stdout, err = run_cli("export", "e2e", "--storage", str(storage), "--output", str(out),
                                *(("--tta", tta) if tta != "auto" else ()))  # fmt: skip
    assert code == 0, err[-3000:]
    return stdout


def test_export_chooses_tta_on_validation_and_evaluate_agrees(finished, tmp_path):
    _, storage, exp = finished
    split = json.loads((exp / "split.json").read_text())
    stdout = export_with(storage, tmp_path / "auto", "auto")  # the default
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    choice = config["tta_choice"]
    acc = choice["val_acc"]
    assert choice["requested"] == "auto" and choice["n_val_photos"] == len(split["val"])
    assert config["tta"] == ("flip" if acc["flip"] > acc["none"] else "none")
    line = f"Test-time augmentation: {config['tta']} (--tta auto"
    assert line in stdout and f"{acc['none']:.4f} without, {acc['flip']:.4f} with" in stdout
    # `evaluate --tta` on the validation photos finds the same two accuracies.
    data = tmp_path / "val"
    for rel, _ in split["val"]:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).symlink_to(Path(split["root"]) / rel)
    for tta in ("none", "flip"):
        code, out, err = run_cli("evaluate", "e2e", "--storage", str(storage), "--data",
                                 str(data), "--tta", tta)  # fmt: skip
        assert code == 0, err[-2000:]
        result = json.loads(out)
        assert result["tta"] == tta and result["accuracy"] == pytest.approx(acc[tta])

    export_with(storage, tmp_path / "none", "none")
    config = json.loads((tmp_path / "none" / "config.json").read_text())
    assert config["tta"] == "none" and config["tta_choice"] == {"requested": "none"}
