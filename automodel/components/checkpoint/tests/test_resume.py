import logging
import shutil

import pytest
import torch

from automodel.components.checkpoint import CheckpointConfig, Checkpointer, CheckpointError, frozen_fingerprint
from automodel.components.checkpoint.tests.tiny import make_model, save


@pytest.fixture(scope="module")
def model():
    return make_model()


def make_checkpointer(root, **kwargs) -> Checkpointer:
    kwargs.setdefault("enabled", True)
    return Checkpointer(CheckpointConfig(checkpoint_dir=str(root), **kwargs))


def test_nothing_to_resume_in_an_empty_or_missing_dir(tmp_path):
    assert make_checkpointer(tmp_path / "missing").find_resume_checkpoint() is None
    (tmp_path / "empty").mkdir()
    assert make_checkpointer(tmp_path / "empty").find_resume_checkpoint() is None


def test_latest_is_followed(tmp_path, model):
    checkpointer = make_checkpointer(tmp_path)
    for step in (1, 2, 3):
        save(checkpointer, 0, step, model)
    assert (tmp_path / "LATEST").read_text().strip() == "epoch_0_step_3"
    assert make_checkpointer(tmp_path).find_resume_checkpoint() == tmp_path / "epoch_0_step_3"


def test_latest_naming_a_missing_or_incomplete_checkpoint_falls_back(tmp_path, model, caplog):
    checkpointer = make_checkpointer(tmp_path)
    save(checkpointer, 0, 1, model)
    save(checkpointer, 0, 2, model)
    (tmp_path / "epoch_0_step_2" / "meta.json").unlink()  # pruned by hand
    with caplog.at_level(logging.WARNING):
        assert make_checkpointer(tmp_path).find_resume_checkpoint() == tmp_path / "epoch_0_step_1"
    assert "is not a complete checkpoint (meta.json is missing); resuming from the newest complete one" in caplog.text

    shutil.rmtree(tmp_path / "epoch_0_step_2")
    assert make_checkpointer(tmp_path).find_resume_checkpoint() == tmp_path / "epoch_0_step_1"
    shutil.rmtree(tmp_path / "epoch_0_step_1")
    assert make_checkpointer(tmp_path).find_resume_checkpoint() is None


def test_checkpoint_published_after_latest_wins(tmp_path, model, caplog):
    # a run killed between publishing epoch_1_step_12 and rewriting LATEST leaves LATEST one behind
    checkpointer = make_checkpointer(tmp_path)
    save(checkpointer, 0, 10, model)
    save(checkpointer, 1, 12, model)
    (tmp_path / "LATEST").write_text("epoch_0_step_10\n")
    with caplog.at_level(logging.WARNING):
        assert make_checkpointer(tmp_path).find_resume_checkpoint() == tmp_path / "epoch_1_step_12"
    assert "newer than the LATEST pointer" in caplog.text
    (tmp_path / "LATEST").unlink()
    assert make_checkpointer(tmp_path).find_resume_checkpoint() == tmp_path / "epoch_1_step_12"


def test_stale_temp_dirs_are_ignored_then_removed_by_the_next_save(tmp_path, model, caplog):
    checkpointer = make_checkpointer(tmp_path)
    save(checkpointer, 0, 1, model)
    stale = tmp_path / ".tmp-epoch_0_step_2-deadbeef"
    shutil.copytree(tmp_path / "epoch_0_step_1", stale)  # even a complete-looking temp dir is not a checkpoint
    (tmp_path / ".tmp-LATEST-cafe").write_text("epoch_0_step_2")
    assert make_checkpointer(tmp_path).find_resume_checkpoint() == tmp_path / "epoch_0_step_1"
    with caplog.at_level(logging.INFO):
        save(make_checkpointer(tmp_path), 0, 2, model)
    assert not stale.exists() and not (tmp_path / ".tmp-LATEST-cafe").exists()
    assert "left over by an interrupted save" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "epoch_0_step_1", "epoch_0_step_2"]


def test_keep_last_n(tmp_path, model):
    checkpointer = make_checkpointer(tmp_path, keep_last_n=2)
    for step in (1, 2, 3, 4):
        save(checkpointer, step // 3, step, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "epoch_1_step_3", "epoch_1_step_4"]


def test_keep_last_n_never_deletes_what_latest_names(tmp_path, model):
    # a higher-step checkpoint from an earlier run is in the way; the new one is what LATEST names, so it stays
    save(make_checkpointer(tmp_path), 0, 50, model)
    path = save(make_checkpointer(tmp_path, keep_last_n=1), 0, 5, model)
    assert (tmp_path / "LATEST").read_text().strip() == "epoch_0_step_5"
    assert path.is_dir() and (tmp_path / "epoch_0_step_50").is_dir()


# --- restore_from -----------------------------------------------------------------------------------------------


def test_restore_from_a_directory_a_name_or_latest(tmp_path, model):
    run = tmp_path / "run1"
    checkpointer = make_checkpointer(run)
    save(checkpointer, 0, 1, model)
    save(checkpointer, 0, 2, model)
    # restore_from works even with checkpointing disabled, and wins over LATEST
    elsewhere = make_checkpointer(tmp_path / "run2", enabled=False, restore_from=str(run / "epoch_0_step_1"))
    assert elsewhere.find_resume_checkpoint() == run / "epoch_0_step_1"
    assert make_checkpointer(run, restore_from="epoch_0_step_1").find_resume_checkpoint() == run / "epoch_0_step_1"
    assert make_checkpointer(run, restore_from="LATEST").find_resume_checkpoint() == run / "epoch_0_step_2"
    # the checkpoint_dir of another run resolves to its newest checkpoint
    assert (
        make_checkpointer(tmp_path / "run2", restore_from=str(run)).find_resume_checkpoint() == run / "epoch_0_step_2"
    )


def test_restore_from_errors_name_the_path(tmp_path, model):
    with pytest.raises(CheckpointError, match=r"checkpoint.restore_from 'nope/epoch_0_step_9' does not exist"):
        make_checkpointer(tmp_path, restore_from="nope/epoch_0_step_9").find_resume_checkpoint()
    with pytest.raises(CheckpointError, match=r"restore_from is LATEST, but checkpoint.checkpoint_dir '.*' holds no"):
        make_checkpointer(tmp_path, restore_from="LATEST").find_resume_checkpoint()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "meta.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"'.*half' is not a complete checkpoint: manifest.json is missing; give"):
        make_checkpointer(tmp_path, restore_from=str(tmp_path / "half")).find_resume_checkpoint()


# --- identity -----------------------------------------------------------------------------------------------------


def test_identity_mismatch_names_both_models(tmp_path, model):
    llama = {"architecture": "LlamaForCausalLM", "num_parameters": 134_515_008, "vocab_size": 49152}
    qwen = {"architecture": "Qwen2ForCausalLM", "num_parameters": 494_032_768, "vocab_size": 151936}
    path = save(make_checkpointer(tmp_path), 0, 1, model, model_identity=llama)
    checkpointer = make_checkpointer(tmp_path)
    checkpointer.check_identity(path, dict(llama, name_or_path="/elsewhere/copy"))  # not structural: fine
    checkpointer.check_identity(path, {"architecture": "LlamaForCausalLM"})  # only shared keys are compared
    with pytest.raises(
        CheckpointError,
        match=r"^checkpoint dir '.*' holds a checkpoint of a different model \(LlamaForCausalLM 134.5M vs "
        r"Qwen2ForCausalLM 494M\); use another checkpoint.checkpoint_dir or remove it$",
    ):
        checkpointer.check_identity(path, qwen)
    with pytest.raises(
        CheckpointError, match=r"\(LlamaForCausalLM 134.5M vocab_size 49152 vs LlamaForCausalLM 134.5M "
    ):
        checkpointer.check_identity(path, dict(llama, vocab_size=32000))
    with pytest.raises(CheckpointError, match=r"\(checkpoint.restore_from\) holds a different model .* point "):
        make_checkpointer(tmp_path / "other", restore_from=str(path)).check_identity(path, qwen)


def test_identity_of_a_damaged_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot read '.*meta.json'"):
        make_checkpointer(tmp_path).check_identity(tmp_path, {"architecture": "X"})


def test_rng_state_round_trips_per_rank_name(tmp_path, model):
    state = {"torch": torch.get_rng_state(), "seed": 7}
    path = save(make_checkpointer(tmp_path), 0, 1, model, rng_state=state)
    loaded = make_checkpointer(tmp_path).load(path)["rng_state"]
    assert loaded["seed"] == 7 and torch.equal(loaded["torch"], state["torch"])


# --- the base model under an adapter --------------------------------------------------------------------------------


def lora_like(scale: float = 1.0):
    """A model whose base is frozen except one layer (what PEFT leaves trainable, in miniature)."""
    model = make_model(seed=0)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(scale)  # scale != 1: the "instruct" version of the same architecture
    for name, param in model.named_parameters():
        param.requires_grad_("layers.1.mlp" in name)
    return model


def with_fingerprint(model) -> dict:
    return {"architecture": "LlamaForCausalLM", "num_parameters": 1, "frozen_fingerprint": frozen_fingerprint(model)}


def test_frozen_fingerprint_is_the_weights_not_their_dtype():
    base = lora_like()
    fingerprint = frozen_fingerprint(base)
    assert fingerprint["num_params"] == sum(not p.requires_grad for p in base.parameters())
    bf16 = lora_like()
    for param in bf16.parameters():
        if not param.requires_grad:
            param.data = param.data.to(torch.bfloat16)  # cast_frozen_linear_weights does this
    assert frozen_fingerprint(bf16) == fingerprint
    assert frozen_fingerprint(lora_like(scale=1.01))["values"] != fingerprint["values"]
    trainable_again = lora_like()
    trainable_again.model.norm.weight.requires_grad_(True)
    assert frozen_fingerprint(trainable_again)["names"] != fingerprint["names"]
    assert frozen_fingerprint(make_model()) == {}  # full fine-tuning: nothing frozen


def test_frozen_fingerprint_on_the_meta_device_is_none_with_a_warning(caplog):
    with torch.device("meta"):
        model = lora_like()
    with caplog.at_level(logging.WARNING):
        assert frozen_fingerprint(model) is None
    assert "still on the meta device" in caplog.text


def test_an_adapter_resumed_onto_another_base_model_is_refused(tmp_path):
    base = lora_like()
    path = save(make_checkpointer(tmp_path), 0, 1, base, model_identity=with_fingerprint(base))
    checkpointer = make_checkpointer(tmp_path)
    checkpointer.check_identity(path, with_fingerprint(lora_like()))  # the same base: fine
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint '.*epoch_0_step_1' was trained on a different base model: its adapter \(trainable "
        r"weights\) was trained on frozen weights that differ from this model's .*use another "
        r"checkpoint.checkpoint_dir",
    ):
        checkpointer.check_identity(path, with_fingerprint(lora_like(scale=1.01)))
    # not compared: another set of frozen parameters (the load reports it), full fine-tuning, an old checkpoint
    changed = lora_like(scale=1.01)
    changed.model.norm.weight.requires_grad_(True)
    checkpointer.check_identity(path, with_fingerprint(changed))
    checkpointer.check_identity(path, {"architecture": "LlamaForCausalLM", "num_parameters": 1})
    full = save(make_checkpointer(tmp_path / "full"), 0, 1, base, model_identity=with_fingerprint(make_model()))
    make_checkpointer(tmp_path / "full").check_identity(full, with_fingerprint(make_model(seed=3)))
