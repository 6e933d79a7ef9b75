import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from automodel.components.checkpoint import CheckpointConfig, Checkpointer, CheckpointError
from automodel.components.checkpoint.tests.tiny import identity, make_model, make_optim, save, train_step


def make_checkpointer(tmp_path, **kwargs) -> Checkpointer:
    return Checkpointer(CheckpointConfig(enabled=True, checkpoint_dir=str(tmp_path / "ckpt"), **kwargs))


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_round_trip_restores_everything_and_training_continues_identically(tmp_path, tokenizer, caplog):
    model = make_model(seed=0)
    optimizer, scheduler = make_optim(model)
    for seed in range(3):
        train_step(model, optimizer, scheduler, seed)
    rng_state = {"torch": torch.get_rng_state(), "note": "rank0"}
    train_state = {"step_scheduler": {"step": 3, "epoch": 0, "batches_in_epoch": 6}, "tokens_seen": 48}
    checkpointer = make_checkpointer(tmp_path)
    path = save(
        checkpointer,
        0,
        3,
        model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        train_state=train_state,
        rng_state=rng_state,
        config_yaml="seed: 1\nwandb:\n  api_key: ${WANDB_API_KEY}\n",
    )

    root = tmp_path / "ckpt"
    assert path == root / "epoch_0_step_3"
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "epoch_0_step_3"]  # no temp leftovers
    assert (root / "LATEST").read_text().strip() == "epoch_0_step_3"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in (path / "model").iterdir()
    }
    assert sorted(p.name for p in path.iterdir()) == [
        "config.yaml",
        "manifest.json",
        "meta.json",
        "model",
        "rng_rank0.json",
        "rng_rank0.safetensors",
        "scheduler.json",
        "state",
        "train_state.json",
    ]
    # no pickle anywhere: one safetensors shard (this one rank's) and the structure as JSON
    assert sorted(p.name for p in (path / "state").iterdir()) == [
        "extra.json",
        "shard-00001-model-00001-of-00001.safetensors",
    ]
    assert (path / "config.yaml").read_text().endswith("${WANDB_API_KEY}\n")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["model_identity"] == identity(model) and meta["torch_version"] == torch.__version__
    assert meta["transformers_version"] and meta["saved_at"] and (meta["epoch"], meta["step"]) == (0, 3)

    restored = make_model(seed=1)
    restored_optimizer, restored_scheduler = make_optim(restored)
    assert not params_equal(model, restored)
    loaded = make_checkpointer(tmp_path).load(
        path, model=restored, optimizer=restored_optimizer, lr_scheduler=restored_scheduler
    )
    assert loaded["train_state"] == train_state
    assert torch.equal(loaded["rng_state"]["torch"], rng_state["torch"]) and loaded["rng_state"]["note"] == "rank0"
    assert params_equal(model, restored)
    assert restored.lm_head.weight is restored.model.embed_tokens.weight  # the tie survived the load
    assert restored_scheduler.state_dict() == scheduler.state_dict()
    assert restored_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 5e-3

    # the exact continuation: one more step on each gives the same weights
    assert train_step(model, optimizer, scheduler, 10) == train_step(
        restored, restored_optimizer, restored_scheduler, 10
    )
    assert params_equal(model, restored)


def test_model_folder_loads_with_transformers(tmp_path, tokenizer):
    model = make_model(seed=0)
    path = save(make_checkpointer(tmp_path), 0, 1, model, tokenizer=tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(path / "model")
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(path / "model")
    assert reloaded_tokenizer("w1 w5 w9").input_ids == tokenizer("w1 w5 w9").input_ids


def test_torch_save_format(tmp_path):
    model = make_model(seed=0)
    path = save(make_checkpointer(tmp_path, model_save_format="torch_save"), 0, 1, model)
    assert (path / "model" / "pytorch_model.bin").is_file() and not list((path / "model").glob("*.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(path / "model")
    assert params_equal(model, reloaded)
    restored = make_model(seed=1)
    make_checkpointer(tmp_path).load(path, model=restored)
    assert params_equal(model, restored)


def test_plain_module_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    checkpointer = make_checkpointer(tmp_path)
    path = checkpointer.save(
        0, 1, model=model, train_state={}, rng_state=None, config_yaml="", model_identity={"architecture": "MLP"}
    )
    assert not (path / "rng_rank0.json").exists()
    restored = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    checkpointer.load(path, model=restored)
    assert params_equal(model, restored)


def test_loading_into_another_model_fails_clearly(tmp_path):
    path = save(make_checkpointer(tmp_path), 0, 1, make_model(seed=0))
    with pytest.raises(CheckpointError, match=r"does not fit this model/optimizer .*[Ss]ize mismatch"):
        make_checkpointer(tmp_path).load(path, model=make_model(vocab_size=256))
    with pytest.raises(CheckpointError, match=r"does not fit this model/optimizer \(.*0.weight"):
        make_checkpointer(tmp_path).load(path, model=torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_optimizer_state_required_when_an_optimizer_is_passed(tmp_path):
    model = make_model()
    path = save(make_checkpointer(tmp_path), 0, 1, model)  # saved without optimizer
    optimizer, scheduler = make_optim(model)
    with pytest.raises(CheckpointError, match=r"does not fit this model/optimizer .*optim"):
        make_checkpointer(tmp_path).load(path, model=model, optimizer=optimizer)
    with pytest.raises(CheckpointError, match=r"has no scheduler.json"):
        make_checkpointer(tmp_path).load(path, lr_scheduler=scheduler)


def test_only_trainable_parameters_are_in_the_state(tmp_path):
    model = make_model(seed=0)
    for name, param in model.named_parameters():
        param.requires_grad_("layers.1" in name)  # a frozen base with a few trainable layers, as PEFT leaves it
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    path = save(make_checkpointer(tmp_path), 0, 1, model, optimizer=optimizer)
    from safetensors import safe_open

    with safe_open(str(next((path / "state").glob("*.safetensors"))), framework="pt") as f:
        saved = set(f.keys())
    model_keys = {key for key in saved if key.startswith("model/")}
    assert model_keys and all("layers.1" in key for key in model_keys)
    assert {key for key in saved if key.startswith("optim/state/")}


def test_missing_rank_rng_state_is_none_with_a_warning(tmp_path, caplog):
    path = save(make_checkpointer(tmp_path), 0, 1, make_model())
    with caplog.at_level(logging.WARNING):
        loaded = make_checkpointer(tmp_path).load(path, rank=1)
    assert loaded["rng_state"] is None
    assert "no RNG state for rank 1 (saved with world_size 1" in caplog.text


def test_disabled_checkpointer_writes_nothing(tmp_path):
    checkpointer = Checkpointer(CheckpointConfig(enabled=False, checkpoint_dir=str(tmp_path / "ckpt")))
    assert save(checkpointer, 0, 1, make_model()) is None
    assert not (tmp_path / "ckpt").exists()
    assert checkpointer.find_resume_checkpoint() is None


def test_existing_checkpoint_is_never_overwritten(tmp_path, caplog):
    model = make_model()
    first = make_checkpointer(tmp_path)
    path = save(first, 0, 2, model)
    stamp = (path / "meta.json").read_text()

    # the same run saving the same step again (final save after the last step): skipped
    assert save(first, 0, 2, model, train_state={"other": 1}) == path
    # another run: refused
    with pytest.raises(CheckpointError, match=r"epoch_0_step_2' already exists and was not written by this run"):
        save(make_checkpointer(tmp_path), 0, 2, model)
    # a run that resumed from it: skipped with a warning
    resumed = make_checkpointer(tmp_path)
    resumed.load(resumed.find_resume_checkpoint())
    with caplog.at_level(logging.WARNING):
        assert save(resumed, 0, 2, model) == path
    assert "is the one this run resumed from" in caplog.text
    assert (path / "meta.json").read_text() == stamp
    assert json.loads((path / "train_state.json").read_text())["step_scheduler"]["step"] == 2


def test_failed_save_leaves_previous_checkpoint_and_latest_untouched(tmp_path):
    model = make_model()
    checkpointer = make_checkpointer(tmp_path)
    save(checkpointer, 0, 1, model)
    with pytest.raises(TypeError, match="not JSON serializable"):
        save(checkpointer, 0, 2, model, train_state={"bad": object()})

    with pytest.raises(CheckpointError, match=r"cannot save rng_state: extra is a builtins.object; a checkpoint holds"):
        save(checkpointer, 0, 3, model, rng_state={"torch": torch.get_rng_state(), "extra": object()})
    root = tmp_path / "ckpt"
    assert (root / "LATEST").read_text().strip() == "epoch_0_step_1"
    assert not (root / "epoch_0_step_3").exists()
    assert checkpointer.find_resume_checkpoint() == root / "epoch_0_step_1"


def test_unwritable_checkpoint_dir_is_a_user_error(tmp_path):
    (tmp_path / "ckpt").write_text("a file, not a directory")
    with pytest.raises(CheckpointError, match=r"cannot create a checkpoint in checkpoint.checkpoint_dir '.*ckpt'"):
        save(make_checkpointer(tmp_path), 0, 1, make_model())


class ShampooLike(torch.optim.Optimizer):
    """The state shapes that broke naive serialisers (what SOAP keeps): created lazily, an int step, a column-major
    (non-contiguous) float32 basis beside bf16-sized moments, tuple / inf / None hyperparameters."""

    def __init__(self, params, lr=1e-2, betas=(0.9, 0.99), clip=float("inf"), decay=None):
        super().__init__(params, {"lr": lr, "betas": betas, "clip": clip, "decay": decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    n = p.shape[0]
                    basis = torch.randn(n, n, generator=torch.Generator().manual_seed(n)) / n
                    state["basis"] = basis.t()  # a transposed view: column-major
                state["step"] += 1
                state["exp_avg"].lerp_(p.grad, 1 - group["betas"][0])
                update = state["basis"] @ state["exp_avg"].reshape(p.shape[0], -1)
                p.add_(update.reshape(p.shape).clamp(-group["clip"], group["clip"]), alpha=-group["lr"] / state["step"])


def test_resume_is_exact_with_an_unusual_optimizer_state(tmp_path):
    def build(seed):
        model = make_model(seed=seed)
        return model, ShampooLike(model.parameters())

    def steps(model, optimizer, seeds):
        for seed in seeds:
            ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(seed))
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    model, optimizer = build(0)
    steps(model, optimizer, [0, 1])
    basis = next(iter(optimizer.state.values()))["basis"]
    assert not basis.is_contiguous()
    path = save(make_checkpointer(tmp_path), 0, 2, model, optimizer=optimizer)
    steps(model, optimizer, [2, 3])

    restored, restored_optimizer = build(5)
    make_checkpointer(tmp_path).load(path, model=restored, optimizer=restored_optimizer)
    state = next(iter(restored_optimizer.state.values()))
    assert type(state["step"]) is int and state["step"] == 2 and torch.equal(state["basis"], basis)
    group = restored_optimizer.param_groups[0]
    assert (group["betas"], group["clip"], group["decay"]) == ((0.9, 0.99), float("inf"), None)
    steps(restored, restored_optimizer, [2, 3])
    assert params_equal(model, restored)
