import pytest

from automodel._shared.errors import UserError
from automodel.components.checkpoint import CheckpointConfig, CheckpointError


def test_defaults():
    config = CheckpointConfig()
    assert (config.enabled, config.checkpoint_dir, config.model_save_format) == (False, "checkpoints/", "safetensors")
    assert config.save_consolidated and config.restore_from is None and config.keep_last_n is None
    assert issubclass(CheckpointError, UserError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"enabled": "yes"}, r"checkpoint.enabled must be true or false, got 'yes'"),
        ({"checkpoint_dir": ""}, r"checkpoint.checkpoint_dir must be a non-empty directory path"),
        (
            {"model_save_format": "dcp"},
            r"checkpoint.model_save_format must be one of \['safetensors', 'torch_save'\], got 'dcp'",
        ),
        ({"restore_from": " "}, r"checkpoint.restore_from must be a checkpoint directory, 'LATEST' or null"),
        ({"keep_last_n": 0}, r"checkpoint.keep_last_n must be a positive integer or null, got 0"),
        ({"keep_last_n": True}, r"checkpoint.keep_last_n must be a positive integer or null, got True"),
    ],
)
def test_invalid_values_name_the_key(kwargs, message):
    with pytest.raises(CheckpointError, match=message):
        CheckpointConfig(**kwargs)


def test_paths_are_accepted_and_kept_as_strings(tmp_path):
    config = CheckpointConfig(checkpoint_dir=tmp_path / "ckpt", restore_from=tmp_path / "ckpt" / "epoch_0_step_1")
    assert config.checkpoint_dir == str(tmp_path / "ckpt")
    assert config.restore_from == str(tmp_path / "ckpt" / "epoch_0_step_1")
