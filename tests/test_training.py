"""The shared training loop, exercised through the smallest real stage: the smoke VAE."""

import ast
import platform
from pathlib import Path

import pytest
import torch

from tiny_magicvideo import stages
from tiny_magicvideo.presets import get_preset
from tiny_magicvideo.runs import checkpoint_step, load_checkpoint, load_weights
from tiny_magicvideo.training import (Stage, TrainingDiverged, keep_freed_memory, make_ema, make_optimizer, read_log,
                                      train_stage)
from tiny_magicvideo.vae import AutoencoderKL

REPO = Path(__file__).resolve().parents[1]


def smoke_config(steps=20):
    config = get_preset("smoke")
    config.train.vae_steps = steps
    config.train.checkpoint_every = 5
    config.train.log_every = 1
    config.train.sample_every = 1000  # only at the end
    return config


def run_vae(config, run_dir, interrupt_at=None):
    """Train the smoke VAE stage; raise KeyboardInterrupt at step `interrupt_at` like a kill."""
    torch.manual_seed(0)  # the model's initial weights
    stage = stages.vae_stage(config, run_dir, torch.device("cpu"))
    if interrupt_at is not None:
        calls = {"count": 0}
        loss = stage.loss

        def interrupted_loss(batch, generator):
            calls["count"] += 1
            if calls["count"] == interrupt_at:
                raise KeyboardInterrupt
            return loss(batch, generator)

        stage.loss = interrupted_loss
    return train_stage(stage, config, run_dir, torch.device("cpu"))


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path):
    config = smoke_config(steps=20)
    straight = run_vae(config, tmp_path / "straight")

    with pytest.raises(KeyboardInterrupt):
        run_vae(config, tmp_path / "resumed", interrupt_at=13)  # killed during step 13
    assert checkpoint_step(tmp_path / "resumed" / "state_vae.pt") == 10
    assert not (tmp_path / "resumed" / "vae.pt").exists()
    resumed = run_vae(config, tmp_path / "resumed")

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(load_checkpoint(tmp_path / "straight" / "vae.pt", ["model"])["model"].items(),
                            load_checkpoint(tmp_path / "resumed" / "vae.pt", ["model"])["model"].values()):
        assert torch.equal(a, b), name
    # the log holds each step once: rows from the lost steps 11-12 were dropped on resume
    steps = [int(row["step"]) for row in read_log(tmp_path / "resumed") if row["name"] == "loss"]
    assert steps == list(range(1, 21))


def test_weights_file_round_trips_bit_identically(tmp_path):
    config = smoke_config(steps=6)
    ema_model = run_vae(config, tmp_path)
    fresh = AutoencoderKL(config.vae)
    assert load_weights(fresh, tmp_path / "vae.pt") == 6
    for (name, a), b in zip(ema_model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "samples" / "vae_000006.gif").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def vae_stage_whose_loss_changes_at(config, run_dir, step, change):
    """The smoke VAE stage, its loss at `step` replaced by change(loss)."""
    torch.manual_seed(0)
    stage = stages.vae_stage(config, run_dir, torch.device("cpu"))
    loss, calls = stage.loss, {"count": 0}

    def changed_loss(batch, generator):
        calls["count"] += 1
        value, parts = loss(batch, generator)
        return (change(value) if calls["count"] == step else value), parts

    stage.loss = changed_loss
    return stage


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = smoke_config(steps=20)
    stage = vae_stage_whose_loss_changes_at(config, tmp_path, 8, lambda loss: loss * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 8.*step 5"):
        train_stage(stage, config, tmp_path, torch.device("cpu"))
    state = load_checkpoint(tmp_path / "state_vae.pt", ["model", "step"])
    assert int(state["step"]) == 5
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (tmp_path / "vae.pt").exists()


def test_missing_corrupt_and_foreign_checkpoints_are_refused_clearly(tmp_path):
    vae = AutoencoderKL(get_preset("smoke").vae)
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*vae.pt"):
        load_weights(vae, tmp_path / "vae.pt")
    truncated = tmp_path / "truncated.pt"
    torch.save({"model": vae.state_dict(), "ema": vae.state_dict(), "step": torch.tensor(1)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable checkpoint.*truncated"):
        load_weights(vae, truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(ValueError, match="lacks model, ema, step"):
        load_weights(vae, foreign)
    wrong_size = tmp_path / "wrong.pt"
    other = AutoencoderKL(get_preset("cpu").vae)
    torch.save({"model": other.state_dict(), "ema": other.state_dict(), "step": torch.tensor(1)}, wrong_size)
    with pytest.raises(ValueError, match="do not fit the model"):
        load_weights(vae, wrong_size)


def test_every_torch_load_uses_weights_only():
    sources = [*REPO.glob("tiny_magicvideo/*.py"), REPO / "train.py", *REPO.glob("benchmarks/*.py")]
    calls = 0
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls += 1
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert keywords.get("weights_only") == "True", f"{path.name}:{node.lineno}"
    assert calls >= 1


def test_learning_rate_warms_up_then_follows_a_cosine_to_a_tenth():
    import math

    from tiny_magicvideo.training import learning_rate_factor
    assert learning_rate_factor(0, 10, 110) == pytest.approx(0.1)
    assert learning_rate_factor(9, 10, 110) == pytest.approx(1.0)
    assert learning_rate_factor(10, 10, 110) == pytest.approx(1.0)
    # halfway through the decay: 0.1 + 0.9 * (1 + cos(pi / 2)) / 2 = 0.55
    assert learning_rate_factor(60, 10, 110) == pytest.approx(0.55)
    assert learning_rate_factor(35, 10, 110) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert learning_rate_factor(110, 10, 110) == pytest.approx(0.1)


def test_the_ema_starts_at_the_weights_then_follows_its_formula_with_the_warming_decay():
    model = torch.nn.Linear(3, 2)
    ema, expected = make_ema(model, decay=0.9), [p.detach().clone() for p in model.parameters()]
    for n in range(6):  # n: the updates averaged before this one
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        ema.update_parameters(model)
        decay = min(0.9, (1 + n) / (10 + n)) if n else 0.0  # the first update copies the weights
        expected = [e + (1 - decay) * (p.detach() - e) for e, p in zip(expected, model.parameters())]
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ema.module.parameters(), expected))


def test_the_fused_adamw_takes_the_steps_of_the_loop_over_parameters():
    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
    models[1].load_state_dict(models[0].state_dict())
    fused, _ = make_optimizer(Stage(name="vae", model=models[0], loss=None, batches=None, num_steps=1,
                                    learning_rates={"train.vae_learning_rate": 1e-2}), models[0], 0.01)
    looped = torch.optim.AdamW(models[1].parameters(), lr=1e-2, weight_decay=0.01, foreach=False)
    assert fused.defaults["fused"]
    for _ in range(5):
        x = torch.randn(8, 4)
        for model, optimizer in zip(models, (fused, looped)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(models[0].parameters(), models[1].parameters()))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_freed_memory_is_kept_for_the_next_step_without_page_faults():
    import resource  # Unix only

    assert keep_freed_memory()  # glibc took both settings
    faults = []
    for _ in range(4):  # a 16 MiB block (4,096 pages) filled and freed, as a step's activations are
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(4 * 2 ** 20).sum()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert max(faults[1:]) < 400, faults  # the block comes back from the heap, not page by page


def test_a_checkpoint_is_kept_only_once_the_next_loss_shows_its_weights_sound(tmp_path):
    """Checkpoints every 2 steps; step 5's loss, the first computed from step 4's weights, is NaN:
    so the checkpoint of step 4 is never written, and the one kept is step 2's."""
    config = smoke_config(steps=20)
    config.train.checkpoint_every = 2
    stage = vae_stage_whose_loss_changes_at(config, tmp_path, 5, lambda loss: loss * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5; stopping and keeping state_vae.pt "
                                               r"\(step 2\)"):
        train_stage(stage, config, tmp_path, torch.device("cpu"))
    assert checkpoint_step(tmp_path / "state_vae.pt") == 2


def test_a_loss_ten_times_the_stages_mean_is_a_divergence(tmp_path):
    config = smoke_config(steps=20)
    stage = vae_stage_whose_loss_changes_at(config, tmp_path, 7, lambda loss: loss * 50)
    with pytest.raises(TrainingDiverged, match=r"loss rose to .* at step 7, over 10 times the stage's mean so far"):
        train_stage(stage, config, tmp_path, torch.device("cpu"))
    assert checkpoint_step(tmp_path / "state_vae.pt") == 5


def test_the_rate_suggested_after_a_divergence_is_a_quarter_and_at_most_the_presets():
    from types import SimpleNamespace

    from tiny_magicvideo.training import StageRun

    def suggested(rate: float) -> float:
        run = SimpleNamespace(stage=SimpleNamespace(learning_rates={"train.vae_learning_rate": rate}),
                              preset="smoke")
        return StageRun.lower_rate(run, "train.vae_learning_rate")

    assert suggested(1e6) == get_preset("smoke").train.vae_learning_rate  # not 250000, which diverges as well
    assert suggested(1e-3) == pytest.approx(2.5e-4) and suggested(1e-4) == pytest.approx(2.5e-5)
