"""End-to-end tests of the LLM finetune recipe on a tiny offline model: golden losses, checkpoints that transformers
loads, exact resume after SIGKILL, SIGTERM pre-emption, DDP over 2 processes, and the recipe file run directly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from automodel.components.config import load_config
from automodel.recipes.llm import finetune
from automodel.recipes.llm.tests.conftest import REPO, write_config

# Train losses of the first run below (fp32, CPU, seed 1234). They pin the whole pipeline: tokenisation, prompt
# masking, sampling order, loss normalisation, optimizer and LR schedule. Regenerate only for an intended change.
GOLDEN_LOSSES = {1: 6.9650, 2: 6.9708, 3: 6.9303, 4: 6.7569, 5: 6.7759, 6: 6.8296}


def read_metrics(path: Path, split: str = "train") -> dict[int, dict]:
    """Step -> last logged record (a resumed run logs some steps twice; the later record wins)."""
    records = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["split"] == split:
            records[record["step"]] = record
    return records


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "automodel", *args]


def test_golden_losses_checkpoint_and_validation(tiny_model_dir: Path, tmp_path: Path):
    cfg = load_config(write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt"))
    summary = finetune.main(cfg)

    losses = {step: round(loss, 4) for step, loss in summary["train_losses"].items()}
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=2e-4)
    assert summary["val_loss_after"] < summary["val_loss_before"]

    # Checkpoints every 2 steps, LATEST names the last; the model folder is a plain HF folder.
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.glob("epoch_*")) == ["epoch_0_step_2", "epoch_0_step_4", "epoch_0_step_6"]
    assert (ckpt / "LATEST").read_text().strip() == "epoch_0_step_6"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ckpt / "epoch_0_step_6" / "model")
    tokenizer = AutoTokenizer.from_pretrained(ckpt / "epoch_0_step_6" / "model")
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer("Context: a river. Question: how long?", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    # The saved config keeps the YAML's values and is itself a valid config.
    saved = load_config(ckpt / "epoch_0_step_6" / "config.yaml")
    finetune.validate(saved)
    assert saved.step_scheduler.max_steps == 6

    metrics = read_metrics(ckpt / "metrics.jsonl")
    assert set(metrics) == set(GOLDEN_LOSSES)
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "peak_memory_gib", "mfu", "num_label_tokens"):
        assert key in metrics[1], key
    assert set(read_metrics(ckpt / "metrics.jsonl", "val")) == {0, 3, 6}


def _start(cfg_path: Path, *extra: str, log: Path) -> subprocess.Popen:
    # A session of its own: a SIGKILL can then reach torchrun's worker processes too (as a node failure would).
    return subprocess.Popen(
        cli_command("llm", "finetune", "-c", str(cfg_path), *extra),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )


def _kill_tree(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the test could interrupt it"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.005)


LONG_RUN = (
    "--step_scheduler.max_steps",
    "40",
    "--step_scheduler.ckpt_every_steps",
    "5",
    "--step_scheduler.val_every_steps",
    "none",
    "--dataset.limit_dataset_samples",
    "200",
)


PEFT_SECTION = "peft:\n  target_modules: [q_proj, v_proj]\n  dim: 4\n  alpha: 8\n  dropout: 0.1\n"


@pytest.mark.parametrize(
    ("peft", "launch"),
    [(False, ()), (True, ()), (False, ("--nproc-per-node", "2", "--distributed.strategy", "fsdp2"))],
    ids=["full", "lora", "fsdp2x2"],
)
def test_sigkill_then_resume_continues_the_same_trajectory(
    tiny_model_dir: Path, tmp_path: Path, peft: bool, launch: tuple[str, ...]
):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")
    if peft:  # dropout > 0: the resumed run must also restore the RNG streams exactly
        cfg.write_text(cfg.read_text() + PEFT_SECTION)
    # The reference: one uninterrupted run, in another checkpoint dir.
    ref = subprocess.run(
        cli_command(
            "llm", "finetune", "-c", str(cfg), *LONG_RUN, *launch, "--checkpoint.checkpoint_dir", str(tmp_path / "ref")
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert len(reference) == 40

    # Kill -9 as soon as the first checkpoint is published, mid-run.
    proc = _start(cfg, *LONG_RUN, *launch, log=tmp_path / "killed.log")
    _wait_for(lambda: (tmp_path / "ckpt" / "LATEST").exists(), proc)
    _kill_tree(proc)
    killed_at = max(read_metrics(tmp_path / "ckpt" / "metrics.jsonl"))
    resumed_from = int((tmp_path / "ckpt" / "LATEST").read_text().strip().rsplit("_", 1)[1])
    assert resumed_from < 40

    again = subprocess.run(
        cli_command("llm", "finetune", "-c", str(cfg), *LONG_RUN, *launch),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resumed from {tmp_path / 'ckpt'}" in again.stderr
    resumed = read_metrics(tmp_path / "ckpt" / "metrics.jsonl")
    assert sorted(resumed) == list(range(1, 41)), (killed_at, resumed_from)
    for step in range(resumed_from + 1, 41):
        assert abs(resumed[step]["loss"] - reference[step]["loss"]) <= 1e-6, step
        assert abs(resumed[step]["lr"] - reference[step]["lr"]) <= 1e-12, step


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_model_dir: Path, tmp_path: Path):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")
    proc = _start(cfg, *LONG_RUN, "--step_scheduler.ckpt_every_steps", "1000", log=tmp_path / "run.log")
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and '"split": "train"' in metrics.read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, (tmp_path / "run.log").read_text()[-3000:]
    latest = (tmp_path / "ckpt" / "LATEST").read_text().strip()
    step = int(latest.rsplit("_", 1)[1])
    assert 1 <= step < 40 and max(read_metrics(metrics)) == step
    assert "shutdown signal" in (tmp_path / "run.log").read_text()


@pytest.mark.parametrize(
    "strategy",
    [["--distributed.strategy", "ddp"], ["--distributed.strategy", "fsdp2"], ["--distributed.tp_size", "2"]],
    ids=["ddp", "fsdp2", "tp2"],
)
def test_two_processes_match_one_process(tiny_model_dir: Path, tmp_path: Path, strategy: list[str]):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "single")
    common = (
        "--step_scheduler.max_steps",
        "5",
        "--step_scheduler.val_every_steps",
        "none",
        "--dist_env.backend",
        "nccl",
    )  # no CUDA here: must fall back to gloo with a warning
    one = subprocess.run(
        cli_command("llm", "finetune", "-c", str(cfg), *common), capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        cli_command(
            "llm",
            "finetune",
            "-c",
            str(cfg),
            "--nproc-per-node",
            "2",
            *common,
            *strategy,
            "--checkpoint.checkpoint_dir",
            str(tmp_path / "multi"),
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-5000:]
    assert "using 'gloo' instead" in two.stderr
    single, multi = (
        read_metrics(tmp_path / "single" / "metrics.jsonl"),
        read_metrics(tmp_path / "multi" / "metrics.jsonl"),
    )
    for step in range(1, 6):
        # Same global batch (data-parallel shards of one permutation, or the same batch on both TP ranks), other
        # padding and reduction order: equal up to fp32 rounding.
        assert multi[step]["loss"] == pytest.approx(single[step]["loss"], abs=1e-5)
        assert multi[step]["grad_norm"] == pytest.approx(single[step]["grad_norm"], abs=1e-4)
        assert multi[step]["num_label_tokens"] == single[step]["num_label_tokens"]
    # The consolidated checkpoint (gathered from the shards) is the single-process model, and transformers loads it.
    w1 = _weights(tmp_path / "single" / "epoch_0_step_5" / "model")
    w2 = _weights(tmp_path / "multi" / "epoch_0_step_5" / "model")
    assert sorted(w1) == sorted(w2)
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], atol=1e-5, rtol=1e-4)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "multi" / "epoch_0_step_5" / "model")


def test_resume_on_another_world_size_reshards(tiny_model_dir: Path, tmp_path: Path):
    """2 FSDP2 ranks -> 1 process -> 2 ranks: DCP reshards weights and optimizer state; the data order note shows."""
    cfg = write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")
    base = ("--step_scheduler.val_every_steps", "none", "--step_scheduler.ckpt_every_steps", "2")
    runs = [("2", "2"), ("1", "4"), ("2", "6")]  # (processes, stop after step)
    for nproc, max_steps in runs:
        proc = subprocess.run(
            cli_command(
                "llm",
                "finetune",
                "-c",
                str(cfg),
                "--nproc-per-node",
                nproc,
                *base,
                "--step_scheduler.max_steps",
                max_steps,
            ),
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        if max_steps != "2":
            assert "Resumed from" in proc.stderr and "data order differs" in proc.stderr
    metrics = read_metrics(tmp_path / "ckpt" / "metrics.jsonl")
    assert sorted(metrics) == [1, 2, 3, 4, 5, 6]
    assert all(metrics[step]["loss"] < 7.5 for step in metrics)  # resumed from trained weights, not re-initialised


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_recipe_file_runs_directly(tiny_model_dir: Path, tmp_path: Path):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")
    script = REPO / "automodel" / "recipes" / "llm" / "finetune.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "-c",
            str(cfg),
            "--step_scheduler.max_steps=2",
            "--checkpoint.enabled",
            "false",
            "--logging.log_dir",
            str(tmp_path / "logs"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(read_metrics(tmp_path / "logs" / "metrics.jsonl")) == [1, 2]
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.slow
def test_real_smollm2_default_example(tmp_path: Path):
    """The README's default example, shortened to 2 steps, on the real SmolLM2-135M-Instruct."""
    from automodel.components._transformers import prepare_smollm2

    model_dir = prepare_smollm2(os.environ.get("AUTOMODEL_SMOLLM2_DIR", str(REPO / "models/SmolLM2-135M-Instruct")))
    proc = subprocess.run(
        cli_command(
            "llm",
            "finetune",
            "-c",
            "examples/llm/smollm2_135m_squad.yaml",
            "--model.pretrained_model_name_or_path",
            str(model_dir),
            "--step_scheduler.max_steps",
            "2",
            "--step_scheduler.global_batch_size",
            "2",
            "--step_scheduler.local_batch_size",
            "2",
            "--validation_dataset.split",
            "train[:4]",
            "--lr_scheduler.lr_warmup_steps",
            "0",
            "--checkpoint.checkpoint_dir",
            str(tmp_path / "ckpt"),
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation loss:" in proc.stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "ckpt" / "epoch_0_step_2" / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and tokenizer.eos_token_id == 2
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    reply = tokenizer.decode(model.generate(**inputs, max_new_tokens=12, do_sample=False)[0])
    assert "Paris" in reply  # two small steps must not break what the model knows


def _rows(n: int) -> list[dict]:
    from automodel.recipes.llm.tests.conftest import DATA

    return [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()[:n]]


def _replace_dataset(cfg_path: Path, dataset_yaml: str) -> None:
    text = cfg_path.read_text()
    start, end = text.index("dataset:\n"), text.index("validation_dataset:")
    text = text[:start] + dataset_yaml + text[end:]
    start, end = text.index("validation_dataset:\n"), text.index("dataloader:")
    cfg_path.write_text(text[:start] + "validation_" + dataset_yaml + text[end:])


def test_column_mapped_and_chat_formats_train(tiny_model_dir: Path, tmp_path: Path):
    rows = _rows(40)
    flat = tmp_path / "flat.jsonl"
    flat.write_text(
        "".join(
            json.dumps({"passage": r["context"], "q": r["question"], "a": r["answers"]["text"][0]}) + "\n" for r in rows
        )
    )
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "Answer with a span of the context."},
                        {"role": "user", "content": f"{r['context']}\n{r['question']}"},
                        {"role": "assistant", "content": r["answers"]["text"][0]},
                    ]
                }
            )
            + "\n"
            for r in rows
        )
    )
    formats = {
        "column_mapped": (
            "dataset:\n  _target_: automodel.components.datasets.llm.column_mapped_text_instruction_dataset."
            f"ColumnMappedTextInstructionDataset\n  path_or_dataset_id: {flat}\n  split: train[:32]\n"
            "  column_mapping: {context: passage, question: q, answer: a}\n"
        ),
        "chat": (
            "dataset:\n  _target_: automodel.components.datasets.llm.chat.make_chat_dataset\n"
            f"  path_or_dataset_id: {chat}\n  split: train[:32]\n"
        ),
    }
    for name, dataset_yaml in formats.items():
        cfg_path = write_config(tmp_path / f"{name}.yaml", tiny_model_dir, tmp_path / name)
        _replace_dataset(cfg_path, dataset_yaml)
        cfg = load_config(cfg_path, ["--step_scheduler.max_steps", "4", "--validation_dataset.split", "train[32:]"])
        summary = finetune.main(cfg)
        assert len(summary["train_losses"]) == 4, name
        assert summary["val_loss_after"] < summary["val_loss_before"], name


def test_pretraining_from_a_model_config(tiny_model_dir: Path, tmp_path: Path):
    cfg_path = write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")
    text = cfg_path.read_text().replace(
        f"  _target_: automodel.NeMoAutoModelForCausalLM.from_pretrained\n  pretrained_model_name_or_path: {tiny_model_dir}\n",
        f"  _target_: automodel.NeMoAutoModelForCausalLM.from_config\n  config: {tiny_model_dir}\n"
        f"  num_hidden_layers: 1\ntokenizer:\n  pretrained_model_name_or_path: {tiny_model_dir}\n",
    )
    cfg_path.write_text(text)
    summary = finetune.main(load_config(cfg_path, ["--step_scheduler.max_steps", "2"]))
    assert len(summary["train_losses"]) == 2
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "ckpt" / "epoch_0_step_2" / "model").num_hidden_layers == 1


@pytest.mark.parametrize("example", sorted((REPO / "examples" / "llm").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_validates(example: Path):
    finetune.validate(load_config(example))


def test_lora_adapter_is_an_hf_peft_adapter_and_merges(tiny_model_dir: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg_path = write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")
    cfg_path.write_text(cfg_path.read_text() + PEFT_SECTION)
    summary = finetune.main(load_config(cfg_path, ["--step_scheduler.max_steps", "4"]))
    assert summary["val_loss_after"] < summary["val_loss_before"]
    model = summary["model"].eval()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)

    adapter = tmp_path / "ckpt" / "epoch_0_step_4" / "model"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        theirs = PeftModel.from_pretrained(base, adapter).eval()(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-5

    from automodel.components._peft import merge_adapter

    merge_adapter(None, adapter, tmp_path / "merged")  # the base recorded in the adapter (what the CLI does)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - theirs).abs().max().item() <= 1e-5

    # Training can start from an existing adapter: its first validation equals where the last run ended.
    restart = write_config(tmp_path / "restart.yaml", tiny_model_dir, tmp_path / "ckpt2")
    restart.write_text(restart.read_text() + f"peft:\n  adapter_path: {adapter}\n")
    again = finetune.main(load_config(restart, ["--step_scheduler.max_steps", "1"]))
    assert again["val_loss_before"] == pytest.approx(summary["val_loss_after"], abs=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        [
            "--loss_fn._target_",
            "automodel.components.loss.linear_ce.FusedLinearCrossEntropy",
            "--loss_fn.chunk_size",
            "16",
        ],
        ["--compile.enabled", "true"],
        ["--distributed.activation_checkpointing", "true"],
    ],
    ids=["fused_linear_ce", "compile", "activation_checkpointing"],
)
def test_speed_options_learn_the_same_thing(tiny_model_dir: Path, tmp_path: Path, overrides: list[str]):
    """Each speed / memory switch changes how the step is computed, never what it computes (fp32, same data)."""
    cfg = load_config(write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt"), overrides)
    summary = finetune.main(cfg)
    losses = {step: round(loss, 4) for step, loss in summary["train_losses"].items()}
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=2e-4)


def test_packing_gives_the_same_validation_loss_and_trains(tiny_model_dir: Path, tmp_path: Path):
    """Packed rows (block-diagonal attention from position_ids, loss over supervised tokens only) must score the
    validation set exactly as unpacked batches do; a leak across documents or a wrong token count would not."""
    cfg_path = write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")
    plain = finetune.main(load_config(cfg_path, ["--step_scheduler.max_steps", "2", "--checkpoint.enabled", "false"]))
    packed = finetune.main(
        load_config(
            cfg_path,
            [
                "--step_scheduler.max_steps",
                "2",
                "--checkpoint.enabled",
                "false",
                "--packed_sequence.packed_sequence_size",
                "256",
            ],
        )
    )
    assert packed["val_loss_before"] == pytest.approx(plain["val_loss_before"], abs=1e-5)
    assert packed["val_loss_after"] < packed["val_loss_before"]
    grouped = finetune.main(
        load_config(
            cfg_path,
            [
                "--step_scheduler.max_steps",
                "2",
                "--checkpoint.enabled",
                "false",
                "--dataloader.group_by_length",
                "true",
            ],
        )
    )
    assert grouped["val_loss_before"] == pytest.approx(plain["val_loss_before"], abs=1e-6)
    assert len(grouped["train_losses"]) == 2
