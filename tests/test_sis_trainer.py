"""Trainer: exact resume, atomic pickle-free checkpoints, schedule, data order, DDP, mapping stage."""

import dataclasses
import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from attnsynth.data.sampler import StepBatchSampler
from attnsynth.sis import checkpoint as ckpt
from attnsynth.sis.run_log import read_log
from attnsynth.sis.train_config import MappingTrainConfig, TrainConfig
from attnsynth.sis.trainer import lr_factor, train, train_mapping
from cli_runner import run_cli


def _config(out, **changes):
    base = TrainConfig(data="toy-faces", out=str(out), config="small", resolution=(32, 32), steps=6, batch_size=2, toy_n=5, log_every=1, sample_every=0, checkpoint_every=3, seed=3)
    return dataclasses.replace(base, **changes)


class _Killed(Exception):
    pass


def _kill_at(step):
    def callback(info):
        if info["step"] == step:
            raise _Killed
    return callback


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoint every 3 steps)."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    train(_config(out))
    return out


def test_killed_and_resumed_run_retraces_the_uninterrupted_one(straight_run, tmp_path):
    out = tmp_path / "resumed"
    with pytest.raises(_Killed):
        train(_config(out), callback=_kill_at(5))  # killed during step 5; last checkpoint at step 3
    assert json.loads((out / "checkpoint" / "state.json").read_text())["state"]["step"] == 3
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2, 3, 4]
    train(_config(out), resume=True)
    straight, resumed = read_log(straight_run / "log.jsonl"), read_log(out / "log.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]  # steps past the checkpoint were redone once
    for a, b in zip(straight, resumed):
        for key in a:
            if key.startswith("loss/"):
                assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
    for name in ("model", "generator", "discriminator"):
        wa, wb = load_file(str(straight_run / f"{name}.safetensors")), load_file(str(out / f"{name}.safetensors"))
        assert wa.keys() == wb.keys()
        for key in wa:
            torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-6)


def test_run_directory_contents(straight_run):
    saved = json.loads((straight_run / "train_config.json").read_text())
    assert saved["train"]["steps"] == 6 and saved["model"]["arch"] == "ca2sis" and saved["perceptual_loss"] is False
    assert len(saved["label_set"]["class_names"]) == 19
    record = read_log(straight_run / "log.jsonl")[-1]
    for key in ("loss/G/total", "loss/G/gan", "loss/G/fm", "loss/G/att", "loss/D/total", "lr/G", "lr/D"):
        assert key in record
    assert "loss/G/l1" not in record  # lambda_l1 = 0 (the paper's) computes no pixel loss
    assert record["lr/G"] == pytest.approx(1e-4 * lr_factor(5, 6, 0.5)) and record["lr/D"] == pytest.approx(4e-4 * lr_factor(5, 6, 0.5))
    assert (straight_run / "samples" / "step_0000006.png").is_file()
    files = {p.name for p in (straight_run / "checkpoint").iterdir()}
    assert files == {"generator.safetensors", "discriminator.safetensors", "ema.safetensors", "optim_generator.safetensors", "optim_discriminator.safetensors", "state.json"}
    from attnsynth.sis.model import SISModel

    model = SISModel.from_pretrained(straight_run)  # the final model is the EMA generator
    ema = load_file(str(straight_run / "checkpoint" / "ema.safetensors"))
    raw = load_file(str(straight_run / "generator.safetensors"))
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(raw[k], ema[k]) for k in ema)


def test_vgg_off_is_announced_and_spade_has_no_attention_loss(tmp_path, capsys):
    train(_config(tmp_path / "spade", config="spade-small", steps=1, checkpoint_every=0))
    assert "perceptual (VGG) loss is OFF" in capsys.readouterr().out
    record = read_log(tmp_path / "spade" / "log.jsonl")[-1]
    assert "loss/G/att" not in record and "loss/G/vgg" not in record and "loss/G/gan" in record


def test_existing_run_needs_resume_and_same_options(straight_run):
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(straight_run))
    with pytest.raises(ValueError, match="lr_g"):
        train(_config(straight_run, lr_g=2e-4), resume=True)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    ckpt.save_training_state(tmp_path / "c", modules={"m": model}, optimizers={"m": optimizer}, state={"step": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(OSError):
        ckpt.save_training_state(tmp_path / "c", modules={"m": model}, optimizers={"m": optimizer}, state={"step": 2})
    assert json.loads((tmp_path / "c" / "state.json").read_text())["state"]["step"] == 1  # the old one survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary left behind


def test_optimizer_state_roundtrip_continues_identically():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.0, 0.9))
    x = torch.randn(8, 4)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
    tensors, meta = ckpt.flatten_optimizer(optimizer)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    json.dumps(meta)  # JSON-able
    clone = torch.nn.Linear(4, 3)
    clone.load_state_dict(model.state_dict())
    restored = torch.optim.Adam(clone.parameters(), lr=1.0)
    restored.load_state_dict(ckpt.unflatten_optimizer(tensors, json.loads(json.dumps(meta))))
    assert restored.param_groups[0]["lr"] == 1e-2 and restored.param_groups[0]["betas"] == (0.0, 0.9)
    for m, opt in ((model, optimizer), (clone, restored)):
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


def test_lr_schedule_constant_then_linear_to_zero():
    factors = [lr_factor(s, 10, 0.5) for s in range(10)]
    assert factors[:5] == [1.0] * 5
    assert factors[5:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert lr_factor(3, 10, 1.0) == 1.0


def test_step_sampler_is_a_function_of_the_step_and_ranks_partition_the_global_batch():
    single = StepBatchSampler(num_samples=7, batch_size=4, total_steps=5, seed=1)
    batches = list(single)
    assert list(StepBatchSampler(num_samples=7, batch_size=4, total_steps=5, seed=1, start_step=3)) == batches[3:]
    indices = [i for b in batches for i, _ in b]
    assert sorted(indices[:7]) == list(range(7)) and sorted(indices[7:14]) == list(range(7))  # one pass per epoch
    assert len({s for b in batches for _, s in b}) == 20  # a fresh augmentation seed per stream position
    ranks = [StepBatchSampler(num_samples=7, batch_size=2, total_steps=5, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for step in range(5):
        assert ranks[0].batch(step) + ranks[1].batch(step) == single.batch(step)  # same global batch, split in two


def test_mapping_stage_trains_the_mapping_network_with_g_frozen(straight_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    before = (run / "model.safetensors").read_bytes()
    result = train_mapping(MappingTrainConfig(run=str(run), data=None, steps=2, batch_size=2, toy_n=5, log_every=1, lambda_div=1.0, checkpoint_every=0))
    assert result.step == 2 and (run / "mapping.safetensors").is_file()
    assert (run / "model.safetensors").read_bytes() == before  # the generator is frozen
    record = read_log(run / "mapping_log.jsonl")[-1]
    assert {"loss/M/gan", "loss/M/att", "loss/M/diversity", "loss/D/total"} <= set(record)
    with pytest.raises(FileExistsError, match="--resume"):
        train_mapping(MappingTrainConfig(run=str(run), data=None, steps=2, batch_size=2, toy_n=5))


_DDP_SCRIPT = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(1)
    from accelerate import PartialState
    from safetensors.torch import save_file
    from attnsynth.sis.trainer import train
    from attnsynth.sis.train_config import TrainConfig
    out = sys.argv[1]
    def dump(info):
        if info["step"] == 3:
            rank = PartialState().process_index
            assert PartialState().num_processes == 2
            tensors = {f"{n}.{k}": v.detach().cpu().contiguous().clone() for n, m in info["models"].items() for k, v in m.state_dict().items()}
            save_file(tensors, f"{out}_rank{rank}.safetensors")
    train(TrainConfig(data="toy-faces", out=out, resolution=(32, 32), steps=3, batch_size=2, toy_n=8, log_every=1, sample_every=0, checkpoint_every=0), callback=dump)
''')


@pytest.mark.slow
def test_two_cpu_processes_keep_identical_replicas(tmp_path):
    from two_processes import run_two_processes

    result = run_two_processes(_DDP_SCRIPT, tmp_path, str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = load_file(str(tmp_path / "run_rank0.safetensors")), load_file(str(tmp_path / "run_rank1.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("discriminator.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert read_log(tmp_path / "run" / "log.jsonl")[-1]["step"] == 3


def test_cli_train_dry_run_resume_and_refusal(tmp_path, capsys, monkeypatch):
    def cli(*args):
        return run_cli(capsys, monkeypatch, "sis", "train", *args)

    out = tmp_path / "run"
    common = ["--data", "toy-faces", "--toy-n", "3", "--resolution", "32", "--batch-size", "2", "--out", out, "--sample-every", "0", "--log-every", "1", "--lr-d", "3e-4"]
    code, printed = cli(*common, "--steps", "1", "--dry-run")
    assert code == 0 and json.loads(printed.out)["lr_d"] == 3e-4 and not out.exists()
    assert cli(*common, "--steps", "1")[0] == 0
    code, printed = cli(*common, "--steps", "2", "--resume")
    assert code == 0 and [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2]
    code, printed = cli(*common, "--steps", "3")
    assert code == 2 and printed.err.startswith("error:") and "--resume" in printed.err and printed.err.strip().count("\n") == 0
    code, printed = cli(*common, "--steps", "3", "--resolution", "30x32", "--resume")
    assert code == 2 and "resolution" in printed.err


def test_checkpoint_from_another_model_is_a_one_line_error(tmp_path):
    model, other = torch.nn.Linear(3, 2), torch.nn.Sequential(torch.nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters())
    ckpt.save_training_state(tmp_path / "c", modules={"m": model}, optimizers={"m": optimizer}, state={"step": 1})
    with pytest.raises(ValueError, match=r"m\.safetensors does not match Sequential"):
        ckpt.load_training_state(tmp_path / "c", modules={"m": other}, optimizers={})
    restored = torch.nn.Linear(3, 2)
    assert ckpt.load_training_state(tmp_path / "c", modules={"m": restored}, optimizers={"m": torch.optim.Adam(restored.parameters())}) == {"step": 1}
    assert torch.equal(restored.weight, model.weight)


def test_loss_weights_are_saved_and_the_pixel_l1_is_logged(tmp_path):
    out = tmp_path / "l1"
    train(_config(out, steps=2, checkpoint_every=0, lambda_l1=2.5, lambda_fm=3.0, lambda_att=0.5))
    saved = json.loads((out / "train_config.json").read_text())["train"]
    assert (saved["lambda_l1"], saved["lambda_fm"], saved["lambda_att"]) == (2.5, 3.0, 0.5)
    record = read_log(out / "log.jsonl")[-1]
    total = record["loss/G/gan"] + 3.0 * record["loss/G/fm"] + 2.5 * record["loss/G/l1"] + 0.5 * record["loss/G/att"]
    assert record["loss/G/l1"] > 0 and record["loss/G/total"] == pytest.approx(total, rel=1e-5)


def test_learning_curve_is_written_every_eval_every_steps(tmp_path):
    out = tmp_path / "curve"
    train(_config(out, steps=4, checkpoint_every=0, eval_every=2, eval_n=3))
    records = read_log(out / "eval.jsonl")
    assert [r["step"] for r in records] == [2, 4] and all(r["n"] == 3 for r in records)
    assert {"reconstruction/psnr", "toy/style_error/reconstruction", "transfer/hair/transferred", "toy/global_consistency/transfer/skin"} <= set(records[0])


def test_resume_with_nothing_to_resume_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--resume: .*checkpoint/state\.json does not exist, nothing to resume"):
        train(_config(tmp_path / "empty"), resume=True)
    assert not (tmp_path / "empty").exists()


def test_mapping_stage_needs_gan_steps_unless_it_fits_tokens():
    with pytest.raises(ValueError, match=r"MappingTrainConfig.steps=0 is invalid"):
        MappingTrainConfig(run="x", steps=0)
    assert MappingTrainConfig(run="x", steps=0, token_steps=10).steps == 0


def test_mapping_resume_with_nothing_to_resume_is_a_one_line_error(straight_run):
    with pytest.raises(FileNotFoundError, match=r"mapping_checkpoint/state\.json does not exist, nothing to resume"):
        train_mapping(MappingTrainConfig(run=str(straight_run), steps=1, batch_size=2), resume=True)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_checkpoint_files_are_one_line_errors_naming_the_file(straight_run, tmp_path, damage):
    import shutil

    from attnsynth.sis import edits

    run = tmp_path / "copy"
    shutil.copytree(straight_run, run)

    def spoil(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file" * 4)

    spoil(run / "checkpoint" / "generator.safetensors")
    with pytest.raises(ValueError, match=r"weights file .*checkpoint/generator\.safetensors is damaged"):
        train(_config(run, steps=8), resume=True)
    spoil(run / "model.safetensors")
    with pytest.raises(ValueError, match=r"weights file .*copy/model\.safetensors is damaged"):
        edits.load_model(run)
    shutil.copy(straight_run / "checkpoint" / "generator.safetensors", run / "checkpoint" / "generator.safetensors")
    spoil(run / "checkpoint" / "optim_discriminator.safetensors")
    with pytest.raises(ValueError, match=r"optim_discriminator\.safetensors is damaged"):
        train(_config(run, steps=8), resume=True)


def test_the_g_step_splits_d_fake_and_real_without_changing_outputs_or_the_power_iteration():
    """D(fake), D(real) inside `parametrize.cached` = the authors' D(fake ⊕ real): same outputs, one power-iteration step."""
    import copy

    from torch.nn.utils import parametrize

    from attnsynth.sis.configs import get_config
    from attnsynth.sis.model import build_discriminator, labels_to_onehot
    from attnsynth.sis.trainer import split_outputs

    torch.manual_seed(0)
    batched = build_discriminator(get_config("small", num_classes=19, resolution=(32, 32))).train()
    split = copy.deepcopy(batched)
    fake, real = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    onehot = labels_to_onehot(torch.randint(0, 19, (2, 32, 32)), 19)
    expected_fake, expected_real = split_outputs(batched(torch.cat([fake, real]), torch.cat([onehot, onehot])), 2)
    with parametrize.cached():
        got_fake = split(fake, onehot)
        got_real = split(real, onehot)
    for got, expected in ((got_fake, expected_fake), (got_real, expected_real)):
        for a, b in zip(sum(got, []), sum(expected, [])):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    buffers = dict(batched.named_buffers())
    assert any("_u" in k for k in buffers)
    for name, value in split.named_buffers():  # u, v advanced once, as by the single batched call
        torch.testing.assert_close(value, buffers[name], atol=0, rtol=0)


def test_sliced_wasserstein_is_zero_for_the_same_set_and_grows_with_a_shift():
    from attnsynth.sis.losses import sliced_wasserstein

    torch.manual_seed(0)
    a = torch.randn(64, 10)
    g = torch.Generator().manual_seed(1)
    assert float(sliced_wasserstein(a, a[torch.randperm(64)], generator=g)) < 1e-12  # order of the samples does not matter
    near = float(sliced_wasserstein(a, a + 0.1, generator=torch.Generator().manual_seed(1)))
    far = float(sliced_wasserstein(a, a + 1.0, generator=torch.Generator().manual_seed(1)))
    assert 0 < near < far
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein(a, a[:10])


@pytest.mark.parametrize("mode", ["term", "warm-start"])
def test_mapping_token_term_pulls_mapped_tokens_towards_real_ones(straight_run, tmp_path, mode):
    """The opt-in token term (beside the GAN) and the token-only warm start both lower SW₂² to the real tokens
    (without them the GAN stage alone drives this tiny model's tokens far off: SW₂² ≈ 3e3)."""
    import shutil

    from attnsynth.data import load_dataset
    from attnsynth.sis.losses import sliced_wasserstein
    from attnsynth.sis.mapping import MappingNetwork
    from attnsynth.sis.model import SISModel, load_safetensors
    from attnsynth.sis.trainer import _real_token_bank

    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    if mode == "term":
        config = MappingTrainConfig(run=str(run), data=None, steps=40, batch_size=2, toy_n=5, log_every=1, lr=3e-3, lambda_att=0.0,
                                    lambda_token=50.0, token_bank=5, token_batch=16, checkpoint_every=0)
    else:  # the token fit alone (no GAN step)
        config = MappingTrainConfig(run=str(run), data=None, steps=0, batch_size=2, toy_n=5, log_every=1, token_steps=200,
                                    token_bank=5, token_batch=16, checkpoint_every=0)
    train_mapping(config)
    records = read_log(run / "mapping_log.jsonl")
    assert ("loss/M/token" in records[-1]) if mode == "term" else not records
    model = SISModel.from_pretrained(run).eval()
    dataset = load_dataset("toy-faces", split="train", resolution=(32, 32), augment=False, toy_n=5, seed=3)
    tokens, present = _real_token_bank(model, dataset, 5, torch.device("cpu"))
    assert not tokens[~present].any()  # absent classes are 0, as the mapping network writes them
    real = tokens.flatten(1)

    def distance(mapping):
        torch.manual_seed(0)
        with torch.no_grad():
            mapped = mapping(torch.randn(5, model.config.mapping_latent_dim), present).flatten(1)
        return float(sliced_wasserstein(mapped, real, projections=512, generator=torch.Generator().manual_seed(0)))

    torch.manual_seed(config.seed)
    untrained = MappingNetwork(model.config)  # the stage's initial weights
    trained = load_safetensors(MappingNetwork(model.config), run / "mapping.safetensors")
    assert distance(trained) < 0.5 * distance(untrained), (distance(trained), distance(untrained))
