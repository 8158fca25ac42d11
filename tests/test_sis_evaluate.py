"""Evaluation: report keys, optional networks switched on by local files, toy oracles, mask noise, CLI."""

import json

import numpy as np
import pytest
import torch

from attnsynth.data.mask_noise import perturb_labels
from attnsynth.sis.evaluate import EvalConfig, evaluate, format_report, to_json
from attnsynth.toyworld import faces


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from attnsynth.sis.train_config import TrainConfig
    from attnsynth.sis.trainer import train

    out = tmp_path_factory.mktemp("eval") / "run"
    train(TrainConfig(data="toy-faces", out=str(out), resolution=(32, 32), steps=2, batch_size=2, toy_n=4, sample_every=0, checkpoint_every=0, log_every=1))
    return out


def test_report_on_toy_faces_has_every_section(run):
    report = evaluate(EvalConfig(checkpoint=str(run), data="toy-faces", n=3, batch_size=2, transfer_groups=("hair", "eyes")))
    assert report["n"] == 3 and report["arch"] == "ca2sis"
    assert set(report["reconstruction"]) == {"psnr", "ssim"}
    assert np.isfinite(report["reconstruction"]["psnr"]) and -1 <= report["reconstruction"]["ssim"] <= 1
    assert set(report["off"]) == {"fid", "lpips", "miou"}
    toy = report["toy"]
    for key in ("style_error/reconstruction", "global_consistency/reconstruction", "global_consistency/real", "global_consistency/transfer"):
        assert np.isfinite(toy[key]), key
    assert toy["global_consistency/real"] > 0.9  # the renderer's own images are lit consistently
    assert set(toy["transfer_accuracy"]) == {"hair", "eyes"}
    assert set(toy["transfer_accuracy"]["hair"]) == {"transferred", "kept"}
    levels = [row["level"] for row in report["mask_noise"]]
    assert levels == [0.0, 0.05, 0.1, 0.2]
    assert report["mask_noise"][0]["changed_pixels"] == 0.0
    assert report["mask_noise"][0]["psnr"] == pytest.approx(report["reconstruction"]["psnr"])
    for row in report["mask_noise"][1:]:
        assert row["changed_pixels"] == pytest.approx(row["level"], abs=0.03)
        assert {"psnr", "ssim", "style_error"} <= set(row)
    text = format_report(report)
    assert "mask-noise robustness" in text and "style-transfer accuracy" in text and "fid: no --inception-weights" in text
    json.loads(to_json(report))


class _Features(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return x.float().mean(dim=(2, 3))  # [B, 3] "features" of uint8 images


class _Distance(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).abs().mean(dim=(1, 2, 3))


class _Segmenter(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 19, x.shape[2], x.shape[3])
        logits[:, 0] = 1.0  # everything is background
        return logits


def test_local_networks_switch_fid_lpips_and_miou_on(run, tmp_path):
    paths = {}
    for name, module in (("inception", _Features()), ("lpips", _Distance()), ("segmenter", _Segmenter())):
        paths[name] = tmp_path / f"{name}.pt"
        torch.jit.save(torch.jit.script(module), str(paths[name]))
    report = evaluate(EvalConfig(checkpoint=str(run), data="toy-faces", n=3, batch_size=3, noise_levels=(0.0,), transfer_groups=("hair",),
                                 inception_weights=str(paths["inception"]), lpips_weights=str(paths["lpips"]), segmenter=str(paths["segmenter"])))
    assert report["off"] == {}
    recon = report["reconstruction"]
    assert recon["fid"] >= 0 and recon["lpips"] > 0
    assert 0 < recon["miou"] < 0.5  # only background is ever predicted


def test_exported_toy_folder_uses_its_records_and_plain_folders_have_no_oracles(run, tmp_path):
    data = faces.export(tmp_path / "faces", n=4, resolution=32, seed=10, test_fraction=0.5)
    report = evaluate(EvalConfig(checkpoint=str(run), data=str(data), n=2, noise_levels=(0.0,), transfer_groups=("hair",)))
    assert report["n"] == 2 and "toy" in report
    for kind in ("images", "labels"):  # the same pairs without records: no oracle section
        (tmp_path / "plain" / "test").mkdir(parents=True, exist_ok=True)
        (data / "test" / kind).rename(tmp_path / "plain" / "test" / kind)
    (tmp_path / "plain" / "train").mkdir()
    plain = evaluate(EvalConfig(checkpoint=str(run), data=str(tmp_path / "plain"), n=2, noise_levels=(0.0,)))
    assert "toy" not in plain and "toy" in plain["off"]


def test_missing_metric_weights_are_named(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="--inception-weights"):
        EvalConfig(checkpoint=str(run), data="toy-faces", inception_weights=str(tmp_path / "nope.pth"))


def test_mask_noise_is_seeded_and_changes_about_the_asked_share():
    labels = torch.from_numpy(faces.render(3, 64).labels.astype(np.int64))
    assert torch.equal(perturb_labels(labels, 0.0), labels)
    for level in (0.05, 0.2):
        a = perturb_labels(labels, level, generator=torch.Generator().manual_seed(1))
        b = perturb_labels(labels, level, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
        assert (a != labels).float().mean().item() == pytest.approx(level, abs=0.02)
        assert set(a.unique().tolist()) <= set(labels.unique().tolist())
    with pytest.raises(ValueError, match="noise level"):
        perturb_labels(labels, 1.5)


def test_cli_evaluate_json(run, capsys, monkeypatch):
    import sys

    from attnsynth.cli import main

    monkeypatch.setattr(sys, "argv", ["attnsynth", "sis", "evaluate", "--checkpoint", str(run), "--data", "toy-faces", "--n", "2", "--noise-levels", "0,0.1", "--transfer-groups", "hair", "--json"])
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code in (0, None)
    report = json.loads(capsys.readouterr().out)
    assert [row["level"] for row in report["mask_noise"]] == [0.0, 0.1] and "toy" in report


def test_fp16_checkpoint_is_evaluated_in_float32(run, tmp_path):
    from attnsynth.sis import edits
    from attnsynth.sis.model import SISModel

    half = tmp_path / "half"
    SISModel.from_pretrained(run).half().save_pretrained(half)
    model, _ = edits.load_model(half)
    assert model.dtype == torch.float32
    report = evaluate(EvalConfig(checkpoint=str(half), data="toy-faces", n=2, noise_levels=(0.0,), transfer_groups=("hair",)))
    reference = evaluate(EvalConfig(checkpoint=str(run), data="toy-faces", n=2, noise_levels=(0.0,), transfer_groups=("hair",)))
    assert abs(report["reconstruction"]["psnr"] - reference["reconstruction"]["psnr"]) < 0.5  # fp16 rounding of the weights only
