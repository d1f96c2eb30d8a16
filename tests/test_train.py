"""train.py end to end on the smoke preset."""

import pytest

import train
from tiny_magicvideo.pipeline import load_video
from tiny_magicvideo.training import checkpoint_step, load_run_config


def test_main_job_trains_every_stage_and_skips_finished_ones(tmp_path, capsys):
    run_dir = train.main(["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "first"])
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

    train.main(["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "first"])
    output = capsys.readouterr().out
    assert all(f"stage {name}: finished" in output for name in ("vae", "image", "video", "videovae"))
    assert load_run_config(run_dir).vae.scaling_factor == config.vae.scaling_factor

    # more steps continue the finished stage from its last checkpoint
    train.main(["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "first",
                "--stage", "vae", "--train.vae_steps", "25"])
    assert "resuming from step 20" in capsys.readouterr().out
    assert checkpoint_step(run_dir / "vae.pt") == 25


def test_changing_the_model_of_an_existing_run_is_refused(tmp_path):
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run"]
    train.main(args + ["--train.vae_steps", "2", "--stage", "vae"])
    with pytest.raises(SystemExit, match="vae.base_channels 8 -> 16.*--name NEW"):
        train.main(args + ["--vae.base_channels", "16", "--stage", "vae"])
    # the U-Net has not been trained in this run yet, so its settings may still change
    train.main(args + ["--unet.base_channels", "8", "--train.image_steps", "2", "--stage", "image"])
    # what the video stage trains may change until the video stage starts, not after
    args += ["--unet.base_channels", "8", "--train.video_steps", "2", "--stage", "video"]
    train.main(args + ["--unet.video_trainable", "all"])
    with pytest.raises(SystemExit, match="unet.video_trainable 'all' -> 'temporal'"):
        train.main(args + ["--unet.video_trainable", "temporal"])


def test_video_stage_trains_for_clean_past_frames_and_keeps_the_choice(tmp_path):
    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--train.vae_steps", "2",
            "--train.image_steps", "2", "--train.video_steps", "2", "--train.videovae_steps", "0"]
    # image_model_below: the sample GIFs take the image stage's model for the low steps
    run_dir = train.main(args + ["--diffusion.past_frames", "clean", "--diffusion.image_model_below", "500"])
    assert checkpoint_step(run_dir / "unet.pt") == 2 and (run_dir / "samples" / "video_000002.gif").is_file()
    assert load_run_config(run_dir).diffusion.past_frames == "clean"
    with pytest.raises(SystemExit, match="diffusion.past_frames 'clean' -> 'noised'"):
        train.main(args + ["--diffusion.past_frames", "noised"])
    # a sampling setting: it may change after training
    train.main(args + ["--diffusion.past_frames", "clean", "--diffusion.image_model_below", "0"])
    assert load_run_config(run_dir).diffusion.image_model_below == 0
    # the train section may change: two more steps (the later option wins), each clip beside its noisy twin
    train.main(args + ["--train.video_steps", "4", "--diffusion.past_frames", "clean",
                       "--train.video_twin_clips", "true", "--train.video_frame1_weight", "3"])
    assert checkpoint_step(run_dir / "unet.pt") == 4 and load_run_config(run_dir).train.video_frame1_weight == 3
    with pytest.raises(SystemExit, match="video_frame1_weight -1.0 must be positive"):
        train.main(args + ["--diffusion.past_frames", "clean", "--train.video_twin_clips", "true",
                           "--train.video_frame1_weight", "-1"])
    with pytest.raises(SystemExit, match="video_frame1_weight 3.0 weighs the twin clips' frame 1; add "
                                         "--train.video_twin_clips true"):
        train.main(args + ["--name", "plain", "--train.video_frame1_weight", "3"])
    with pytest.raises(SystemExit, match="video_twin_clips trains on clean past frames, but diffusion.past_frames "
                                         "is 'noised'; add --diffusion.past_frames clean"):
        train.main(args + ["--name", "noised", "--train.video_twin_clips", "true"])


def test_main_job_refuses_a_bad_data_config(tmp_path):
    with pytest.raises(SystemExit, match="too small for the shapes"):
        train.main(["--preset", "smoke", "--runs_dir", str(tmp_path), "--data.image_size", "8"])


def test_unknown_stage_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--preset", "smoke", "--runs_dir", str(tmp_path), "--stage", "audio"])
    assert "invalid choice: 'audio'" in capsys.readouterr().err


def test_video_stage_all_trains_reused_weights_at_their_own_rate(tmp_path):
    """With video_trainable all, video_reused_learning_rate 0 keeps every image weight as the image
    stage left it, while the new layers train at video_learning_rate."""
    import torch

    args = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--train.video_steps", "3",
            "--unet.video_trainable", "all", "--train.video_reused_learning_rate", "0"]
    run_dir = train.main(args + ["--stage", "vae"])
    train.main(args + ["--stage", "image"])
    train.main(args + ["--stage", "video"])
    image = torch.load(run_dir / "unet_image.pt", weights_only=True)["ema"]
    video = torch.load(run_dir / "unet.pt", weights_only=True)["model"]
    assert all(torch.equal(video[name], weight) for name, weight in image.items()), "an image weight moved"
    temporal_out = [name for name in video if "temporal" in name and name.endswith("proj_out.weight")]
    assert temporal_out and any(video[name].abs().sum() > 0 for name in temporal_out), "new layers did not train"
