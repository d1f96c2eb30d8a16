import dataclasses
from pathlib import Path

import pytest

from tiny_magicvideo.cli import build_parser, parse_config
from tiny_magicvideo.config import Config, DataConfig
from tiny_magicvideo.presets import PRESETS, get_preset


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_round_trips_through_json(preset):
    config = get_preset(preset)
    assert Config.from_json(config.to_json()) == config


def test_overrides_are_typed_and_reach_their_section():
    config, _ = parse_config([
        "--preset", "smoke", "--data.num_frames", "6", "--data.colours", "red,blue", "--data.held_out", "",
        "--data.speed_range", "0.5,1.5", "--vae.scaling_factor", "0.25",
        "--vae.downsample_factor", "8", "--train.mixed_precision", "true",
        "--unet.channel_mults", "1,2,4", "--train.learning_rate", "1e-3",
    ])
    assert config.preset == "smoke"
    assert config.data.num_frames == 6
    assert config.data.colours == ("red", "blue")
    assert config.data.speed_range == (0.5, 1.5)
    assert config.vae.scaling_factor == 0.25
    assert config.vae.downsample_factor == 8
    assert config.train.mixed_precision is True
    assert config.unet.channel_mults == (1, 2, 4)
    assert config.train.learning_rate == 1e-3
    assert Config.from_json(config.to_json()) == config


def test_preset_values_are_the_defaults_that_overrides_change():
    smoke, _ = parse_config(["--preset", "smoke"])
    assert smoke == get_preset("smoke")
    cpu, _ = parse_config(["--preset", "cpu", "--seed", "7"])
    assert cpu.seed == 7 and dataclasses.replace(cpu, seed=0) == get_preset("cpu")


def test_auto_picks_the_measured_cpu_preset_on_any_device():
    config, _ = parse_config([])
    assert config.preset == "cpu" and config == get_preset("cpu")


def test_the_paper_preset_is_magicvideo_as_published():
    paper = get_preset("paper")
    assert paper.unet.video_trainable == "temporal"  # image weights and text encoder frozen
    assert paper.unet.temporal_text is False
    assert paper.train.video_t_min == 0  # every diffusion step
    assert paper.train.video_twin_clips is False and paper.train.video_frame1_weight == 1.0
    assert paper.diffusion.past_frames == "noised" and paper.diffusion.video_sampling == "joint"
    assert paper.diffusion.unguided_below == 0 and paper.diffusion.image_model_below == 0
    # where the paper is silent: the measured choices, the same as the cpu preset's
    cpu = get_preset("cpu")
    assert (paper.diffusion.schedule, paper.diffusion.prediction_type, paper.diffusion.guidance_scale) == (
        cpu.diffusion.schedule, cpu.diffusion.prediction_type, cpu.diffusion.guidance_scale)
    # the cpu preset's data, sizes and step counts, so that the two share their first two stages
    assert (paper.data, paper.vae, paper.text) == (cpu.data, cpu.vae, cpu.text)
    assert dataclasses.replace(paper.unet, video_trainable="all", temporal_text=True) == cpu.unet
    for key in ("batch_size", "learning_rate", "vae_steps", "image_steps", "video_steps", "videovae_steps"):
        assert getattr(paper.train, key) == getattr(cpu.train, key), key


def test_the_dataclass_defaults_are_the_papers_video_settings():
    from tiny_magicvideo.config import DiffusionConfig, TrainConfig, UNetConfig
    paper = get_preset("paper")
    for section, defaults in (("unet", UNetConfig()), ("diffusion", DiffusionConfig()), ("train", TrainConfig())):
        for key in ("video_trainable", "temporal_text", "video_sampling", "past_frames", "unguided_below",
                    "image_model_below", "video_t_min", "video_twin_clips", "video_frame1_weight"):
            if hasattr(defaults, key):
                assert getattr(defaults, key) == getattr(getattr(paper, section), key), key


def test_every_departure_from_the_paper_says_so_where_it_is_defined():
    lines = (Path(__file__).resolve().parents[1] / "tiny_magicvideo" / "config.py").read_text().splitlines()
    for field_name in ("video_trainable", "temporal_text", "unguided_below", "video_sampling", "past_frames",
                       "image_model_below", "video_t_min", "video_twin_clips", "video_frame1_weight"):
        row = next(i for i, line in enumerate(lines) if line.startswith(f"    {field_name}: "))
        above = row
        while lines[above - 1].strip().startswith("#"):  # the comment block right above the field
            above -= 1
        comment = " ".join(line.strip().lstrip("#").strip() for line in lines[above:row])
        assert "not in the paper" in comment, field_name


@pytest.mark.parametrize("argv, message", [
    (["--data.colours", "red,purple"], "unknown colour 'purple' in data.colours"),  # the data's checks
    (["--data.num_frames", "40"], "a clip does not fit"),
    (["--train.video_t_min", "1000"], "train.video_t_min 1000 is not a step: use 0 to 999"),  # the video stage's
    (["--train.video_twin_clips", "true"], "add --diffusion.past_frames clean"),
    (["--train.video_frame1_weight", "3"], "weighs the twin clips' frame 1; add --train.video_twin_clips true"),
    (["--diffusion.beta_end", "2"], "must satisfy 0 < beta_start <= beta_end < 1"),  # the diffusion's
    (["--data.image_size", "30"], "must be a multiple of 8; use 32 or 24"),  # the models'
])
def test_every_check_is_made_when_the_config_is_parsed(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_config(["--preset", "smoke", *argv])


@pytest.mark.parametrize("argv, named", [
    (["--data.imagesize", "64"], "--data.imagesize"),  # unknown option
    (["--data.image_size", "big"], "--data.image_size"),  # not an integer
    (["--data.image_size", "6.5"], "--data.image_size"),
    (["--train.mixed_precision", "maybe"], "--train.mixed_precision"),
    (["--data.speed_range", "1,2,3"], "--data.speed_range"),  # wrong length
    (["--vae.downsample_factor", "5"], "--vae.downsample_factor"),  # not a choice
    (["--preset", "laptop"], "laptop"),
])
def test_bad_options_are_errors_that_name_them(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_unknown_option_suggests_the_nearest_real_one(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--train.batchsize", "4"])
    assert "did you mean --train.batch_size" in capsys.readouterr().err


def test_help_lists_every_field_with_its_default():
    help_text = build_parser(get_preset("cpu")).format_help()
    for field in dataclasses.fields(DataConfig):
        assert f"--data.{field.name}" in help_text
    assert "--train.vae_steps INT" in help_text
    assert "(default: 64)" in help_text  # cpu image_size


@pytest.mark.parametrize("values, message", [
    ({"data": {"image_size": "64"}}, "config.data.image_size"),  # a string where an int belongs
    ({"data": {"colours": "red"}}, "config.data.colours"),
    ({"vae": {"latent_chanels": 4}}, "did you mean 'latent_channels'"),
    ({"optimiser": {}}, "unknown key 'optimiser'"),
])
def test_from_dict_rejects_wrong_types_and_unknown_keys(values, message):
    with pytest.raises(ValueError, match=message):
        Config.from_dict(values)


@pytest.mark.parametrize("option", ["image_model_below", "unguided_below"])
@pytest.mark.parametrize("step", [-1, 1001])
def test_a_step_option_outside_0_to_T_is_an_error_that_says_what_the_ends_mean(option, step):
    with pytest.raises(ValueError, match=rf"diffusion.{option} {step} is not a step: use 0 \(.+\) to 1000 \(.+\)"):
        parse_config(["--preset", "smoke", f"--diffusion.{option}", str(step)])
    parse_config(["--preset", "smoke", f"--diffusion.{option}", "1000"])  # the last end is allowed


def test_an_old_config_with_a_removed_option_loads_where_it_was_off_and_is_refused_where_it_was_on():
    values = get_preset("smoke").to_dict()
    off = dict(values, unet=dict(values["unet"], temporal_only_levels=[]),
               diffusion=dict(values["diffusion"], frame_noise_correlation=0.0),
               train=dict(values["train"], video_t_min_share=1.0))
    assert Config.from_dict(off) == get_preset("smoke")
    on = dict(values, diffusion=dict(values["diffusion"], frame_noise_correlation=0.3))
    with pytest.raises(ValueError, match="diffusion.frame_noise_correlation is 0.3, an option this version no "
                                         "longer has .* start a new run with --name NEW"):
        Config.from_dict(on)


def test_abbreviations_are_not_silently_accepted(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--data.colour", "red"])  # not --data.colours
    assert "unknown option '--data.colour'" in capsys.readouterr().err


def test_empty_string_is_an_empty_sequence():
    config, _ = parse_config(["--preset", "smoke", "--data.held_out", ""])
    assert config.data.held_out == ()


def test_the_ladder_climbs_from_the_paper_preset_to_the_cpu_preset():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ladder", Path(__file__).resolve().parents[1] / "benchmarks" / "ladder.py")
    ladder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ladder)
    paper, _ = parse_config(["--preset", "paper"])
    top, _ = parse_config(["--preset", "paper", *ladder.row_options(len(ladder.ROWS) - 1)])
    assert dataclasses.replace(top, preset="cpu", name="cpu") == get_preset("cpu")
    rows = [parse_config(["--preset", "paper", *ladder.row_options(row)])[0] for row in range(len(ladder.ROWS))]
    assert rows[0] == paper
    for below, above, (_, _, kind) in zip(rows, rows[1:], ladder.ROWS[1:]):
        assert below != above  # every row changes something
        if kind == "sampling":  # and a sampling row changes nothing its video stage trains on
            assert dataclasses.replace(above.diffusion, video_sampling=below.diffusion.video_sampling,
                                       unguided_below=below.diffusion.unguided_below) == below.diffusion
            assert (above.train, above.unet) == (below.train, below.unet)
