import dataclasses

import pytest

from tiny_magicvideo.config import PRESETS, Config, DataConfig, build_parser, get_preset, parse_config


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_round_trips_through_json(preset):
    config = get_preset(preset)
    assert Config.from_json(config.to_json()) == config


def test_overrides_are_typed_and_reach_their_section():
    config, _ = parse_config([
        "--preset", "smoke", "--data.num_frames", "6", "--data.colours", "red,blue",
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


def test_auto_preset_resolves_to_a_real_tier():
    config, _ = parse_config([])
    assert config.preset in ("cpu", "gpu")


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


def test_abbreviations_are_not_silently_accepted(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--data.colour", "red"])  # not --data.colours
    assert "unknown option '--data.colour'" in capsys.readouterr().err


def test_empty_string_is_an_empty_sequence():
    config, _ = parse_config(["--preset", "smoke", "--data.held_out", ""])
    assert config.data.held_out == ()
