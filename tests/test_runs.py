"""runs.py: atomic files, the lock, checkpoints that are refused clearly, config.json as the identity."""

import errno
import json
import os
import pickle
import socket
import subprocess
import sys

import pytest
import torch

from tiny_magicvideo.lock import RunInUse, RunLock
from tiny_magicvideo.presets import get_preset
from tiny_magicvideo.runs import (dependent_stages, existing_run_config, fingerprint, load_checkpoint, load_run_config,
                                  load_weights, readable_size, read_record, save_atomically, train_command,
                                  write_text_atomically)
from tiny_magicvideo.vae import AutoencoderKL


def test_a_full_disk_is_one_error_naming_the_file_and_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_atomically({"step": torch.tensor(1)}, path)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the bytes are written; making them durable fails
    with pytest.raises(OSError, match=f"no space left on the disk to write {path} .*[KMG]B free"):
        save_atomically({"step": torch.tensor(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"], "a .tmp file was left behind"
    assert int(load_checkpoint(path, ["step"])["step"]) == 1


def test_free_space_is_said_in_the_unit_that_keeps_it_readable():
    assert readable_size(532_000) == "520 KB"  # not "1 MB free"
    assert readable_size(800) == "800 bytes"
    assert readable_size(3.5 * 2 ** 20) == "3.5 MB" and readable_size(53.2 * 2 ** 30) == "53.2 GB"


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def interrupted(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomically(tmp_path / "config.json", "{}")
    assert not list(tmp_path.iterdir())


def test_the_lock_refuses_a_second_holder_naming_the_first_and_is_free_again_after(tmp_path):
    with RunLock(tmp_path):
        assert f"process {os.getpid()}" in (tmp_path / "lock").read_text()
        with pytest.raises(RunInUse, match=f"in use by process {os.getpid()} on .*wait for it to finish"):
            with RunLock(tmp_path):
                pass
    assert (tmp_path / "lock").read_text() == ""  # released: no holder named
    with RunLock(tmp_path):
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    (tmp_path / "lock").write_text("process 999999 on elsewhere since 2026-01-01 00:00\n")  # its holder died
    with RunLock(tmp_path):
        assert f"process {os.getpid()}" in (tmp_path / "lock").read_text()
    assert "taking over" in capsys.readouterr().out


def test_a_lock_file_copied_with_its_run_folder_names_its_still_running_holder_as_such(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # the copy's lock file names a process that runs on, holding the original folder's lock
        (tmp_path / "lock").write_text(f"process {holder.pid} on {socket.gethostname()} since 2026-01-01 00:00\n")
        with RunLock(tmp_path):
            pass
        said = capsys.readouterr().out
        assert f"process {holder.pid}" in said and "is still running but does not hold this lock" in said
        assert "ended without releasing it" not in said
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / "lock").write_text(f"process {holder.pid} on {socket.gethostname()} since 2026-01-01 00:00\n")
    with RunLock(tmp_path):  # now it has ended
        pass
    assert f"process {holder.pid} on {socket.gethostname()} since 2026-01-01 00:00 ended without releasing it" \
        in capsys.readouterr().out


@pytest.mark.parametrize("garbage", [os.urandom(4096), pickle.dumps({"model": 1, "step": 2}), b""])
def test_random_bytes_or_a_raw_pickle_are_not_a_checkpoint_of_this_project(tmp_path, garbage):
    path = tmp_path / "unet.pt"
    path.write_bytes(garbage)
    for read in (lambda: load_checkpoint(path, ["step"]), lambda: read_record(path)):  # read_record maps it
        with pytest.raises(ValueError, match=r"unet.pt is not a readable checkpoint of this project \(not the zip "
                                             r"archive torch.save writes.*delete it and re-run") as error:
            read()
        assert "mmap" not in str(error.value) and "IndexError" not in str(error.value)


def test_a_code_carrying_checkpoint_is_refused_without_pytorchs_advice_to_run_it(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must not run",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload(), "ema": {}, "step": 1}, evil)
    with pytest.raises(ValueError, match="holds Python objects.*never runs code") as error:
        load_checkpoint(evil, ["model"])
    assert "weights_only=False" not in str(error.value)


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    vae = AutoencoderKL(get_preset("smoke").vae)
    state = vae.state_dict()
    state["decoder.conv_out.bias"] = torch.full_like(state["decoder.conv_out.bias"], float("nan"))
    save_atomically({"model": state, "ema": state, "step": torch.tensor(5)}, tmp_path / "vae.pt")
    with pytest.raises(ValueError, match="non-finite values .* in decoder.conv_out.bias"):
        load_weights(vae, tmp_path / "vae.pt")


def test_fingerprints_tell_weights_apart_and_not_their_order():
    weights = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    assert fingerprint(weights) == fingerprint(dict(reversed(weights.items())))
    changed = {**weights, "a": torch.arange(4.0) + 1e-7}
    assert fingerprint(changed) != fingerprint(weights)


def test_a_run_without_config_json_beside_its_weights_is_an_error(tmp_path):
    assert existing_run_config(tmp_path) is None  # nothing here: a new run
    (tmp_path / "vae.pt").write_bytes(b"weights")
    with pytest.raises(ValueError, match="holds vae.pt but no config.json"):
        existing_run_config(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("{}", "lacks preset, name, data"),
    ("[1, 2]", "lacks preset"),
    ("{not json", "Expecting property name"),
])
def test_an_invalid_config_json_is_an_error_not_the_defaults(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=f"config.json is not a valid run config .*{message}"):
        load_run_config(tmp_path)


def test_a_config_json_with_a_bad_value_is_refused(tmp_path):
    config = get_preset("smoke").to_dict()
    config["train"]["batch_size"] = 0
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="train.batch_size must be at least 1, got 0"):
        load_run_config(tmp_path)


def test_retraining_a_stage_retrains_every_stage_built_on_it():
    assert dependent_stages(["vae"]) == ["vae", "image", "video", "videovae", "interp"]
    assert dependent_stages(["image"]) == ["image", "video", "interp"]
    assert dependent_stages(["videovae", "image"]) == ["image", "video", "videovae", "interp"]
    assert dependent_stages(["interp"]) == ["interp"]


def test_the_suggested_command_names_where_the_run_is():
    from pathlib import Path
    assert train_command(Path("runs/cpu"), "--stage", "video") == "python train.py --name cpu --stage video"
    assert train_command(Path("/tmp/x/smoke")) == "python train.py --runs_dir /tmp/x --name smoke"
