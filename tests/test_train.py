"""train.py end to end on the smoke preset."""

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import helpers
from helpers import load_video
from tiny_magicvideo import stages
from tiny_magicvideo.runs import WEIGHTS_FILES, checkpoint_step, load_checkpoint, load_run_config


def test_main_job_trains_every_stage_and_skips_finished_ones(tmp_path, capsys):
    run_dir = helpers.train(["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "first"])
    config = load_run_config(run_dir)
    assert config.preset == "smoke" and config.name == "first"
    assert config.vae.scaling_factor is not None and config.vae.scaling_factor > 0
    assert checkpoint_step(run_dir / "vae.pt") == config.train.vae_steps
    assert checkpoint_step(run_dir / "unet_image.pt") == config.train.image_steps
    assert checkpoint_step(run_dir / "unet.pt") == config.train.video_steps
    assert checkpoint_step(run_dir / "videovae.pt") == config.train.videovae_steps
    for name in ("log.csv", "loss.png", "vae_reconstructions.png", "samples/data.gif",
                 f"samples/image_{config.train.image_steps:06d}.png"):
        assert (run_dir / name).is_file(), name
    assert load_video(run_dir / "samples" / "data.gif").shape[0] == config.data.num_frames
    video_samples = load_video(run_dir / "samples" / f"video_{config.train.video_steps:06d}.gif")
    assert video_samples.shape[0] == config.data.num_frames
    videovae_samples = load_video(run_dir / "samples" / f"videovae_{config.train.videovae_steps:06d}.gif")
    assert videovae_samples.shape[0] == config.data.num_frames
    assert not list(run_dir.glob("*.tmp"))
    assert "stage videovae: on 32 validation clips, flicker" in capsys.readouterr().out

    helpers.train(["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "first"])
    output = capsys.readouterr().out
    assert all(f"stage {name}: finished" in output for name in ("vae", "image", "video", "videovae"))
    assert load_run_config(run_dir).vae.scaling_factor == config.vae.scaling_factor

    # more steps continue the finished stage from its last checkpoint
    helpers.train(["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "first",
                "--stage", "vae", "--train.vae_steps", "25"])
    assert "resuming from step 20" in capsys.readouterr().out
    assert checkpoint_step(run_dir / "vae.pt") == 25


def test_the_image_stage_encodes_each_training_frame_once_into_the_latent_it_would_draw(tmp_path):
    from tiny_magicvideo.presets import get_preset
    from tiny_magicvideo.data import frames_to_video, sample_clip
    from tiny_magicvideo.vae import AutoencoderKL

    config = get_preset("smoke")
    config.vae = dataclasses.replace(config.vae, scaling_factor=0.5)
    torch.manual_seed(0)
    vae = AutoencoderKL(config.vae).eval()
    latents, captions = stages.encode_training_frames(vae, config, torch.device("cpu"))
    assert latents.shape[0] == len(captions) == config.data.num_train_clips
    for index in (0, 5, config.data.num_train_clips - 1):
        frame, caption, _ = sample_clip(stages.single_frame_data(config.data), "train", index)
        with torch.no_grad():
            alone = vae.encode_video(frames_to_video(frame)[None])  # (1, 4, 1, h, w)
        assert captions[index] == caption
        torch.testing.assert_close(latents[index:index + 1], alone, atol=1e-5, rtol=1e-5)


def test_changing_the_model_of_an_existing_run_is_refused(tmp_path):
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run"]
    helpers.train(args + ["--train.vae_steps", "2", "--stage", "vae"])
    with pytest.raises(SystemExit, match="vae.base_channels 8 -> 16.*--name NEW"):
        helpers.train(args + ["--vae.base_channels", "16", "--stage", "vae"])
    # the U-Net has not been trained in this run yet, so its settings may still change
    helpers.train(args + ["--unet.base_channels", "8", "--train.image_steps", "2", "--stage", "image"])
    # what the video stage trains may change until the video stage starts, not after
    args += ["--unet.base_channels", "8", "--train.video_steps", "2", "--stage", "video"]
    helpers.train(args + ["--unet.video_trainable", "all"])
    with pytest.raises(SystemExit, match="unet.video_trainable 'all' -> 'temporal'"):
        helpers.train(args + ["--unet.video_trainable", "temporal"])


def test_video_stage_trains_twin_clips_for_clean_past_frames_and_keeps_the_choice(tmp_path):
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--train.vae_steps", "2",
            "--train.image_steps", "2", "--train.video_steps", "2", "--train.videovae_steps", "0"]
    twin = ["--diffusion.past_frames", "clean", "--train.video_twin_clips", "true"]
    # image_model_below: the sample GIFs take the image stage's model for the low steps
    run_dir = helpers.train(args + twin + ["--diffusion.image_model_below", "500"])
    assert checkpoint_step(run_dir / "unet.pt") == 2 and (run_dir / "samples" / "video_000002.gif").is_file()
    assert load_run_config(run_dir).diffusion.past_frames == "clean"
    with pytest.raises(SystemExit, match="diffusion.past_frames 'clean' -> 'noised'"):
        helpers.train(args + ["--diffusion.past_frames", "noised", "--train.video_twin_clips", "false"])
    # a sampling setting: it may change after training (the rest comes from the run's config.json)
    helpers.train(args + ["--diffusion.image_model_below", "0"])
    assert load_run_config(run_dir).diffusion.image_model_below == 0
    # the train section may change: two more steps (the later option wins), frame 1 weighing 3
    helpers.train(args + ["--train.video_steps", "4", "--train.video_frame1_weight", "3"])
    assert checkpoint_step(run_dir / "unet.pt") == 4 and load_run_config(run_dir).train.video_frame1_weight == 3
    with pytest.raises(SystemExit, match="video_frame1_weight -1.0 must be positive"):
        helpers.train(args + ["--train.video_frame1_weight", "-1"])
    with pytest.raises(SystemExit, match="video_frame1_weight 3.0 weighs the twin clips' frame 1; add "
                                         "--train.video_twin_clips true"):
        helpers.train(args + ["--name", "plain", "--train.video_frame1_weight", "3"])
    with pytest.raises(SystemExit, match="video_twin_clips trains on clean past frames, but diffusion.past_frames "
                                         "is 'noised'; add --diffusion.past_frames clean"):
        helpers.train(args + ["--name", "noised", "--train.video_twin_clips", "true"])
    with pytest.raises(SystemExit, match="diffusion.past_frames clean samples each frame beside clean finished "
                                         "ones, which the video stage trains for with twin clips; add "
                                         "--train.video_twin_clips true"):
        helpers.train(args + ["--name", "clean", "--diffusion.past_frames", "clean"])


def test_main_job_refuses_a_bad_data_config(tmp_path):
    with pytest.raises(SystemExit, match="too small for the shapes"):
        helpers.train(["--preset", "smoke", "--runs_dir", str(tmp_path), "--data.image_size", "8"])


def test_unknown_stage_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        helpers.train(["--preset", "smoke", "--runs_dir", str(tmp_path), "--stage", "audio"])
    assert "invalid choice: 'audio'" in capsys.readouterr().err


def test_video_stage_all_trains_reused_weights_at_their_own_rate(tmp_path):
    """With video_trainable all, video_reused_learning_rate 0 keeps every image weight as the image
    stage left it, while the new layers train at video_learning_rate."""
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--train.video_steps", "3",
            "--unet.video_trainable", "all", "--train.video_reused_learning_rate", "0"]
    run_dir = helpers.train(args + ["--stage", "vae"])
    helpers.train(args + ["--stage", "image"])
    helpers.train(args + ["--stage", "video"])
    image = torch.load(run_dir / "unet_image.pt", weights_only=True)["ema"]
    video = torch.load(run_dir / "unet.pt", weights_only=True)["model"]
    assert all(torch.equal(video[name], weight) for name, weight in image.items()), "an image weight moved"
    temporal_out = [name for name in video if "temporal" in name and name.endswith("proj_out.weight")]
    assert temporal_out and any(video[name].abs().sum() > 0 for name in temporal_out), "new layers did not train"


# ---------------------------------------------------------------------------------------------
# Reliability: exact resume across stages, kills at any file, one run per lock, one-line errors.

# every stage, 6 steps, a checkpoint every 3: a whole run in seconds
SHORT = ["--preset", "smoke", "--train.vae_steps", "6", "--train.image_steps", "6", "--train.video_steps", "6",
         "--train.videovae_steps", "6", "--train.interp_steps", "6", "--train.checkpoint_every", "3",
         "--train.log_every", "3", "--train.sample_every", "6"]


def assert_same_files(run_dir, reference_dir):
    """All four weights files bit for bit (model, EMA, what they were built on), and the same config."""
    for file in WEIGHTS_FILES.values():
        ours, theirs = load_checkpoint(run_dir / file, ()), load_checkpoint(reference_dir / file, ())
        for part in ("model", "ema"):
            assert ours[part].keys() == theirs[part].keys()
            for name, tensor in ours[part].items():
                assert torch.equal(tensor, theirs[part][name]), f"{file} {part} {name}"
        assert ours["fingerprint"] == theirs["fingerprint"] and ours["built_on"] == theirs["built_on"], file
    ours, theirs = load_run_config(run_dir).to_dict(), load_run_config(reference_dir).to_dict()
    assert ours | {"runs_dir": ""} == theirs | {"runs_dir": ""}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return helpers.train(SHORT + ["--runs_dir", str(tmp_path_factory.mktemp("reference")), "--name", "run"])


def kill_at(monkeypatch, file_name, when="before", count=1):
    """Make the `count`-th commit (rename) of `file_name` raise KeyboardInterrupt, as a kill would,
    just before or just after it happens."""
    real_replace, commits = os.replace, []

    def replace(source, destination):
        if os.path.basename(destination) == file_name:
            commits.append(destination)
        killed_here = len(commits) == count and os.path.basename(destination) == file_name
        if killed_here and when == "before":
            raise KeyboardInterrupt
        real_replace(source, destination)
        if killed_here:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.slow
@pytest.mark.parametrize("file_name, when, count", [
    ("vae.pt", "before", 1),  # the scaling factor is in config.json, vae.pt not yet written
    ("config.json", "before", 2),  # the VAE trained, its scaling factor not yet stored
    ("vae.pt", "after", 1),  # between two stages
    ("state_image.pt", "before", 2),  # inside a stage, at its last checkpoint
    ("unet_image.pt", "before", 1),  # the image stage trained, its weights file not yet written
])
def test_a_kill_at_any_file_then_a_plain_run_ends_bit_for_bit_like_an_uninterrupted_one(
        tmp_path, monkeypatch, uninterrupted, file_name, when, count):
    kill_at(monkeypatch, file_name, when, count)
    with pytest.raises(SystemExit, match="interrupted; run the same command again to resume"):
        helpers.train(SHORT + ["--runs_dir", str(tmp_path), "--name", "run"])
    monkeypatch.undo()
    assert not list(tmp_path.glob("run/*.tmp"))
    run_dir = helpers.train(["--runs_dir", str(tmp_path), "--name", "run"])  # no preset: the run's own settings
    assert_same_files(run_dir, uninterrupted)


@pytest.mark.slow
def test_stage_by_stage_with_a_kill_inside_a_stage_ends_bit_for_bit_like_one_run(tmp_path, monkeypatch,
                                                                                  uninterrupted):
    args = SHORT + ["--runs_dir", str(tmp_path), "--name", "run"]
    helpers.train(args + ["--stage", "vae"])
    helpers.train(args + ["--stage", "image"])
    real_video_stage, losses = stages.STAGES["video"], []

    def video_stage_killed_at_step_5(*stage_args):
        stage = real_video_stage(*stage_args)
        loss = stage.loss

        def killed(batch, generator):
            losses.append(batch)
            if len(losses) == 5:
                raise KeyboardInterrupt
            return loss(batch, generator)

        stage.loss = killed
        return stage

    monkeypatch.setitem(stages.STAGES, "video", video_stage_killed_at_step_5)
    with pytest.raises(SystemExit, match="interrupted; run the same command again to resume"):
        helpers.train(args)
    monkeypatch.undo()
    assert checkpoint_step(tmp_path / "run" / "state_video.pt") == 3
    helpers.train(["--runs_dir", str(tmp_path), "--name", "run", "--stage", "videovae"])
    run_dir = helpers.train(["--runs_dir", str(tmp_path), "--name", "run"])
    assert_same_files(run_dir, uninterrupted)


@pytest.mark.skipif(os.name == "nt", reason="kills the holder with SIGKILL")
def test_a_second_process_is_refused_while_the_first_holds_the_run_and_takes_over_once_it_is_killed(tmp_path):
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--stage", "vae"]
    first = subprocess.Popen([sys.executable, "train.py", *args, "--train.vae_steps", "100000",
                              "--train.checkpoint_every", "100000"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        lock = tmp_path / "run" / "lock"
        for _ in range(600):  # until it holds the lock (importing torch takes a few seconds)
            if lock.is_file() and lock.read_text():
                break
            time.sleep(0.1)
        with pytest.raises(SystemExit, match=f"run .* is in use by process {first.pid} on "):
            helpers.train(args + ["--train.vae_steps", "2"])
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert f"process {first.pid}" in lock.read_text()  # a kill releases nothing by itself
    run_dir = helpers.train(args + ["--train.vae_steps", "2"])
    assert checkpoint_step(run_dir / "vae.pt") == 2 and lock.read_text() == ""


def test_an_existing_run_takes_its_settings_from_its_config_json(tmp_path, capsys):
    helpers.train(["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--train.vae_steps", "2",
                "--stage", "vae"])
    helpers.train(["--runs_dir", str(tmp_path), "--name", "run", "--stage", "vae"])  # no preset, no steps
    assert "stage vae: finished" in capsys.readouterr().out
    assert load_run_config(tmp_path / "run").preset == "smoke"
    with pytest.raises(SystemExit, match="made with preset 'smoke', not 'cpu': drop --preset"):
        helpers.train(["--preset", "cpu", "--runs_dir", str(tmp_path), "--name", "run"])


def test_weights_without_config_json_and_an_empty_config_json_are_refused(tmp_path):
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--stage", "vae"]
    run_dir = helpers.train(args + ["--train.vae_steps", "2"])
    (run_dir / "config.json").unlink()
    with pytest.raises(SystemExit, match="holds vae.pt, state_vae.pt but no config.json"):
        helpers.train(args)
    (run_dir / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="config.json is not a valid run config .*lacks preset"):
        helpers.train(args)


@pytest.mark.parametrize("options, message", [
    (["--train.checkpoint_every", "0"], "train.checkpoint_every must be at least 1, got 0"),
    (["--train.log_every", "0"], "train.log_every must be at least 1, got 0"),
    (["--train.batch_size", "0"], "train.batch_size must be at least 1, got 0"),
    (["--train.learning_rate=-1e-4"], "train.learning_rate must be positive, got -0.0001"),
    (["--train.vae_steps", "-5"], "train.vae_steps must be at least 0, got -5"),
    (["--train.grad_clip", "nan"], "train.grad_clip is nan; it must be a finite number"),
    (["--diffusion.guidance_scale", "inf"], "diffusion.guidance_scale is inf; it must be a finite number"),
    (["--data.image_size", "36"], "data.image_size 36 cannot be taken: .* multiple of 8; use 40 or 32"),
    (["--unet.attention_levels", "3"], r"unet.attention_levels \[3\] are not levels of the U-Net"),
    (["--name", ""], "--name '' is not a run name"),
    (["--name", "../elsewhere"], "--name '../elsewhere' is not a run name"),
    (["--name", ".."], "--name '..' is not a run name"),
])
def test_bad_values_are_one_line_naming_the_value(tmp_path, options, message):
    with pytest.raises(SystemExit, match=message):
        helpers.train(["--preset", "smoke", "--runs_dir", str(tmp_path), *options])
    assert not list(tmp_path.iterdir()), "a refused run wrote something"


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--train.vae_steps", "4",
            "--train.checkpoint_every", "2", "--stage", "vae"]
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("state_vae.pt.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to see which file is written")
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SystemExit, match="error: .*no space left on the disk to write .*state_vae.pt"):
        helpers.train(args)
    assert not list((tmp_path / "run").glob("*.tmp")) and not (tmp_path / "run" / "state_vae.pt").exists()
    monkeypatch.undo()
    assert checkpoint_step(helpers.train(args) / "vae.pt") == 4  # space again: the same command finishes


def test_a_divergence_keeps_only_sound_weights_and_a_lower_rate_on_resume_finishes(tmp_path, capsys):
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--train.vae_steps", "2",
            "--train.image_steps", "12", "--train.checkpoint_every", "2"]
    with pytest.raises(SystemExit, match=r"stage image: the loss rose to .* at step 2, over 10 times the stage's "
                                         r"mean so far .*keeping no checkpoint.*Lower the learning rate and run "
                                         r"again, for example python train.py --runs_dir .* --name run "
                                         r"--train.learning_rate 0.0002") as error:  # the preset's, not 10 / 4
        helpers.train(args + ["--train.learning_rate", "10"])
    # the loss went from about 1 to hundreds at step 2, so no checkpoint was ever shown sound
    assert not (tmp_path / "run" / "state_image.pt").exists()
    suggested = str(error.value).split("for example python train.py ")[1].split()
    run_dir = helpers.train(suggested + ["--stage", "image"])  # the command the error suggests, as it is
    assert checkpoint_step(run_dir / "unet_image.pt") == 12
    assert "train.learning_rate 10.0 -> 0.0002" in capsys.readouterr().out


def test_a_changed_learning_rate_or_step_count_applies_on_resume(tmp_path):
    from tiny_magicvideo.training import learning_rate_factor

    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--stage", "vae",
            "--train.checkpoint_every", "2"]
    run_dir = helpers.train(args + ["--train.vae_steps", "4"])
    helpers.train(args + ["--train.vae_steps", "8", "--train.vae_learning_rate", "3e-4"])
    state = load_checkpoint(run_dir / "state_vae.pt", ["optimizer", "step"])
    # the rate of the last step taken (0-based step 7), from the new peak and the new step count
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-4 * learning_rate_factor(7, 5, 8))
    with pytest.raises(SystemExit, match="state_vae.pt is at step 8, past train.vae_steps 6; ask for 8 steps"):
        (run_dir / "vae.pt").unlink()
        helpers.train(args + ["--train.vae_steps", "6"])


def test_a_corrupt_checkpoint_is_one_line(tmp_path):
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--stage", "vae",
            "--train.checkpoint_every", "2"]
    run_dir = helpers.train(args + ["--train.vae_steps", "2"])
    state = run_dir / "state_vae.pt"
    state.write_bytes(state.read_bytes()[:300])  # truncated, as by a failing disk
    with pytest.raises(SystemExit, match="state_vae.pt is not a readable checkpoint .*delete it and re-run"):
        helpers.train(args + ["--train.vae_steps", "4"])


def test_zero_steps_skips_a_stage_and_a_stage_without_its_inputs_is_refused(tmp_path, capsys):
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--train.vae_steps", "0"]
    with pytest.raises(SystemExit, match="stage image is built on the vae stage, which .* has not trained: its "
                                         "config.json keeps train.vae_steps 0; train it with python train.py "
                                         "--runs_dir .* --name run --train.vae_steps 20") as error:
        helpers.train(args)
    assert "stage vae: skipped (train.vae_steps 0)" in capsys.readouterr().out
    assert not (tmp_path / "run" / "vae.pt").exists()
    suggested = str(error.value).split(" with python train.py ")[1].split()
    helpers.train(suggested + ["--stage", "vae"])  # the command the error suggests trains the VAE
    assert checkpoint_step(tmp_path / "run" / "vae.pt") == 20
    helpers.train(suggested + ["--stage", "image", "--train.image_steps", "2"])  # and the image stage then runs
    assert checkpoint_step(tmp_path / "run" / "unet_image.pt") == 2


@pytest.mark.slow
def test_training_an_earlier_stage_on_refuses_the_later_ones_until_retrained(tmp_path, capsys):
    args = ["--runs_dir", str(tmp_path), "--name", "run"]
    run_dir = helpers.train(SHORT + args + ["--train.videovae_steps", "0"])
    helpers.train(args + ["--stage", "vae", "--train.vae_steps", "8"])  # the VAE trained on
    assert "note: image, video, interp were built on weights that have changed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unet_image.pt was built on an earlier vae.pt") as error:
        helpers.train(args)
    with pytest.raises(SystemExit, match="built on an earlier vae.pt"):
        helpers.sample(["--run", str(run_dir), "--prompt", "a red circle", "--out", str(tmp_path / "x.gif")])
    suggested = str(error.value).split(" with python train.py ")[1].split(", or start")[0].split()
    helpers.train(suggested)  # the command the error suggests, as it is
    assert checkpoint_step(run_dir / "unet.pt") == 6
    helpers.sample(["--run", str(run_dir), "--prompt", "a red circle", "--out", str(tmp_path / "x.gif"),
                 "--num_inference_steps", "2"])
