"""`predict --device`: where the model runs and its batches go, checked at the edge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import cli, run_tuner

import trainables
from tuner.results._predict import load_export, predict_images, resolve_device

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")

SIZE = 64
CLASSES = ["class0", "class1", "class2"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """An export folder as `export` writes one (model.pt, model.ts, labels, config) of a
    randomly initialised ResNet-18: no search needed."""
    torch.manual_seed(0)
    model = trainables.build_model("resnet18", len(CLASSES), False, SIZE).eval()
    mean, std = trainables.normalization("resnet18")
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "model.pt")
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, SIZE, SIZE)), folder / "model.ts")
    (folder / "labels.json").write_text(json.dumps(CLASSES))
    config = {"model": "resnet18", "num_classes": len(CLASSES), "image_size": SIZE}
    config |= {"mean": list(mean), "std": list(std)}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def photos(synthetic: Path) -> list[str]:
    return [str(p) for p in sorted(synthetic.rglob("*.jpg"))[::4]]


def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def probabilities(stdout: str) -> list[list[tuple[str, float]]]:
    return [
        [(p["class"], p["probability"]) for p in r["predictions"]]
        for r in json.loads(stdout)["results"]
    ]


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu(monkeypatch):
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    no_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cpu_and_auto_answer_like_the_default(export, photos, capsys, monkeypatch):
    no_cuda(monkeypatch)  # auto is the CPU here, on any machine
    answers = []
    for extra in ([], ["--device", "cpu"], ["--device", "auto"], ["--device", " CPU "]):
        code, out, err = cli(capsys, "predict", str(export), *photos, "--json", *extra)
        assert code == 0, err
        answers.append(probabilities(out))
    assert len(answers[0]) == len(photos)
    assert all(a == answers[0] for a in answers[1:])


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_a_gpu_on_a_machine_without_one_exits_2_with_one_line(
    export, photos, capsys, monkeypatch, device
):
    no_cuda(monkeypatch)
    code, out, err = cli(capsys, "predict", str(export), *photos, "--device", device)
    assert code == 2 and out == ""
    assert err.strip() == (
        f"tuner predict: error: --device {device}: this machine has no CUDA device that torch "
        "can use; use --device cpu (or auto)"
    )


def test_a_gpu_index_the_machine_lacks_exits_2_naming_the_ones_it_has(
    export, photos, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code, _, err = cli(capsys, "predict", str(export), *photos, "--device", "cuda:2")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        "tuner predict: error: --device cuda:2: this machine has 2 CUDA device(s), cuda:0 to cuda:1"
    )


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:-1", "cuda:x", "mps", "cuda:1.5"])
def test_a_device_that_is_none_of_the_four_forms_exits_2(export, capsys, device):
    code, _, err = cli(capsys, "predict", str(export), "photo.jpg", "--device", device)
    assert code == 2 and "Traceback" not in err
    assert f"expected cpu, cuda, cuda:N or auto, got {device!r}" in err


@pytest.mark.slow
def test_without_cuda_a_gpu_request_exits_2_before_anything_loads(export):
    """As a user runs it: a separate process, the real torch, no GPU (skipped on a GPU host)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    proc = run_tuner("predict", str(export), "missing.jpg", "--device", "cuda")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "tuner predict: error: --device cuda: this machine has no CUDA device that torch can "
        "use; use --device cpu (or auto)"
    ]


@needs_cuda
@pytest.mark.parametrize("trust_model", [False, True])
def test_on_a_gpu_the_model_and_batches_run_there_and_answer_like_the_cpu(
    export, photos, capsys, trust_model
):
    cpu = load_export(export, trust_model, torch.device("cpu"))
    gpu = load_export(export, trust_model, resolve_device("cuda"))
    if not trust_model:
        assert all(p.is_cuda for p in gpu.model.parameters())  # type: ignore[attr-defined]
    seen: list[torch.device] = []
    model = gpu.model

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.device)
        return model(x)

    gpu.model = recording
    expected = predict_images(cpu, photos, top=3)
    got = predict_images(gpu, photos, top=3)
    assert seen and all(d.type == "cuda" for d in seen)
    for a, b in zip(got, expected, strict=True):
        probs = {p["class"]: p["probability"] for p in b["predictions"]}
        assert {
            p["class"]: pytest.approx(p["probability"], abs=2e-3) for p in a["predictions"]
        } == probs
    extra = ["--trust-model"] if trust_model else []
    code, out, err = cli(
        capsys, "predict", str(export), *photos, "--json", "--device", "cuda", *extra
    )
    assert code == 0, err
    assert len(probabilities(out)) == len(photos)
