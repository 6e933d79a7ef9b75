"""End-to-end tests of the VLM finetune recipe on tiny offline models of four families: training lowers the loss,
checkpoints reload in transformers with identical logits, LoRA stays on the language model and is an HF PEFT
adapter, exact resume after SIGKILL, FSDP2 over 2 processes, freezing, bad input, and the CLI."""

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
from transformers import AutoModelForImageTextToText, AutoProcessor

from automodel.components._transformers import ModelLoadError, NeMoAutoProcessor
from automodel.components.config import ConfigValidationError, load_config
from automodel.components.datasets.tests._vlm_tiny import FAMILIES
from automodel.components.datasets.vlm import default_collate_fn, make_conversation_dataset
from automodel.recipes.vlm import finetune
from automodel.recipes.vlm.tests.conftest import REPO, write_config

# Train losses of the LLaVA run below (fp32, CPU, seed 1234). They pin the pipeline: chat template, loss mask,
# image tokens, sampling order, loss normalisation, optimizer. Regenerate only for an intended change.
GOLDEN_LLAVA = {1: 5.7608, 2: 5.5172, 3: 5.2767, 4: 4.9617, 5: 4.6085, 6: 5.0643}


def read_metrics(path: Path, split: str = "train") -> dict[int, dict]:
    records = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["split"] == split:
            records[record["step"]] = record
    return records


def _config(tmp_path: Path, model_dir: Path, data: Path, *overrides: str, extra: str = ""):
    path = write_config(tmp_path / "cfg.yaml", model_dir, data, tmp_path / "ckpt", extra)
    return load_config(path, ["--step_scheduler.num_epochs", "2", *overrides])


def _batch(processor, data: Path) -> dict[str, torch.Tensor]:
    dataset = make_conversation_dataset(data, split="train[16:20]")
    return default_collate_fn([dataset[i] for i in range(len(dataset))], processor)


def _logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model.eval()(**inputs, use_cache=False).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_and_its_checkpoint_reloads_with_identical_logits(
    family: str, tiny_vlm_dirs: dict[str, Path], shapes_data: Path, tmp_path: Path
):
    summary = finetune.main(_config(tmp_path, tiny_vlm_dirs[family], shapes_data))
    losses = summary["train_losses"]
    assert len(losses) == 6
    assert losses[6] < losses[1] - 0.5, losses
    assert summary["val_loss_after"] < summary["val_loss_before"] - 0.5
    if family == "llava":
        assert {step: round(loss, 4) for step, loss in losses.items()} == pytest.approx(GOLDEN_LLAVA, abs=2e-4)

    model_dir = tmp_path / "ckpt" / "epoch_1_step_6" / "model"
    assert (tmp_path / "ckpt" / "LATEST").read_text().strip() == "epoch_1_step_6"
    # transformers alone loads the checkpoint: the model, and the processor saved next to it. Qwen2.5-VL's
    # AutoProcessor needs torchvision for its video processor, which this CPU-only environment lacks.
    reloaded = AutoModelForImageTextToText.from_pretrained(model_dir)
    loader = NeMoAutoProcessor if family == "qwen2_5_vl" else AutoProcessor
    processor = loader.from_pretrained(model_dir)
    assert type(processor).__name__ == type(NeMoAutoProcessor.from_pretrained(tiny_vlm_dirs[family])).__name__
    batch = _batch(processor, shapes_data)
    assert torch.equal(_logits(reloaded, batch), _logits(summary["model"], batch))


def test_lora_adapts_only_the_language_model_and_is_an_hf_peft_adapter(
    tiny_vlm_dirs: dict[str, Path], shapes_data: Path, tmp_path: Path
):
    peft = "peft:\n  target_modules: [q_proj, v_proj]\n  dim: 4\n  alpha: 8\n"
    summary = finetune.main(_config(tmp_path, tiny_vlm_dirs["llava"], shapes_data, extra=peft))
    assert summary["val_loss_after"] < summary["val_loss_before"]
    adapter = tmp_path / "ckpt" / "epoch_1_step_6" / "model"
    targets = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    # CLIP's attention also has q_proj / v_proj: by default only the language model's are adapted.
    adapted = [name for name, module in summary["model"].named_modules() if hasattr(module, "lora_A")]
    assert adapted and all(name.startswith("model.language_model.") for name in adapted), adapted
    assert "vision" not in json.dumps(targets)

    from peft import PeftModel

    base = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dirs["llava"])
    peft_model = PeftModel.from_pretrained(base, adapter)
    batch = _batch(AutoProcessor.from_pretrained(adapter), shapes_data)
    torch.testing.assert_close(_logits(peft_model, batch), _logits(summary["model"], batch), atol=1e-5, rtol=1e-5)


def test_freeze_config_keeps_the_vision_tower_and_trains_the_projector(
    tiny_vlm_dirs: dict[str, Path], shapes_data: Path, tmp_path: Path
):
    freeze = "freeze_config:\n  freeze_vision_tower: true\n  freeze_embeddings: true\n"
    before = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dirs["idefics3"]).state_dict()
    after = finetune.main(_config(tmp_path, tiny_vlm_dirs["idefics3"], shapes_data, extra=freeze))["model"].state_dict()
    for name, value in before.items():
        unchanged = torch.equal(value, after[name])
        if name.startswith("model.vision_model.") or name == "model.text_model.embed_tokens.weight":
            assert unchanged, name
    assert not torch.equal(
        before["model.connector.modality_projection.proj.weight"],
        after["model.connector.modality_projection.proj.weight"],
    )


def test_bad_input_is_reported_before_training(tiny_vlm_dirs: dict[str, Path], shapes_data: Path, tmp_path: Path):
    # Another family's processor.
    other = f"processor:\n  pretrained_model_name_or_path: {tiny_vlm_dirs['gemma3']}\n"
    with pytest.raises(ModelLoadError, match="processor is a Gemma3Processor but the model is 'llava'"):
        finetune.main(_config(tmp_path, tiny_vlm_dirs["llava"], shapes_data, extra=other))
    # Freezing everything.
    freeze = "freeze_config:\n  freeze_language_model: true\n  freeze_projector: true\n"
    with pytest.raises(ModelLoadError, match="freeze_config freezes every parameter"):
        finetune.main(_config(tmp_path, tiny_vlm_dirs["llava"], shapes_data, extra=freeze))
    # Config mistakes are all reported at once, the collate_fn's options included.
    cfg = _config(
        tmp_path,
        tiny_vlm_dirs["llava"],
        shapes_data,
        "--dataloader.collate_fn.max_lenght",
        "64",
        "--freeze_config.freeze_vision",
        "true",
        "--distributed.tp_size",
        "2",
    )
    with pytest.raises(ConfigValidationError) as info:
        finetune.validate(cfg)
    message = str(info.value)
    assert "dataloader.collate_fn: unknown option(s) ['max_lenght']; accepted: max_length, on_overflow" in message
    assert "freeze_config.freeze_vision: unknown key (did you mean 'freeze_vision_tower'?)" in message
    assert "distributed.tp_size: the VLM recipe supports data parallelism only" in message


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "automodel", *args]


def test_sigkill_then_resume_continues_the_same_trajectory(
    tiny_vlm_dirs: dict[str, Path], shapes_data: Path, tmp_path: Path
):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_vlm_dirs["idefics3"], shapes_data, tmp_path / "ckpt")
    long_run = ["--step_scheduler.num_epochs", "6", "--step_scheduler.max_steps", "24"]
    long_run += ["--step_scheduler.ckpt_every_steps", "4", "--step_scheduler.val_every_steps", "none"]
    ref = subprocess.run(
        cli_command("vlm", "finetune", "-c", str(cfg), *long_run, "--checkpoint.checkpoint_dir", str(tmp_path / "ref")),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert len(reference) == 24

    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        cli_command("vlm", "finetune", "-c", str(cfg), *long_run),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "ckpt" / "LATEST").exists():
        assert proc.poll() is None, "the run ended before the test could interrupt it"
        assert time.monotonic() < deadline, "timed out waiting for the first checkpoint"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed_from = int((tmp_path / "ckpt" / "LATEST").read_text().strip().rsplit("_", 1)[1])
    assert resumed_from < 24

    resumed = subprocess.run(
        cli_command("vlm", "finetune", "-c", str(cfg), *long_run), capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {tmp_path / 'ckpt'}" in resumed.stderr
    after = read_metrics(tmp_path / "ckpt" / "metrics.jsonl")
    for step in range(resumed_from + 1, 25):
        assert after[step]["loss"] == pytest.approx(reference[step]["loss"], abs=1e-6), step


def test_fsdp2_on_two_processes_matches_one_process(tiny_vlm_dirs: dict[str, Path], shapes_data: Path, tmp_path: Path):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_vlm_dirs["llava"], shapes_data, tmp_path / "single")
    common = ["--step_scheduler.num_epochs", "2", "--step_scheduler.val_every_steps", "none"]
    finetune.main(load_config(cfg, common))
    two = subprocess.run(
        cli_command(
            "vlm",
            "finetune",
            "-c",
            str(cfg),
            *common,
            "--nproc-per-node",
            "2",
            "--distributed.strategy",
            "fsdp2",
            "--checkpoint.checkpoint_dir",
            str(tmp_path / "multi"),
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single = read_metrics(tmp_path / "single" / "metrics.jsonl")
    multi = read_metrics(tmp_path / "multi" / "metrics.jsonl")
    assert sorted(multi) == sorted(single) == list(range(1, 7))
    for step in single:
        # The same global batch split over two ranks: equal up to fp32 rounding and reduction order.
        assert multi[step]["loss"] == pytest.approx(single[step]["loss"], abs=1e-4), step
        assert multi[step]["num_label_tokens"] == single[step]["num_label_tokens"]
    # The consolidated checkpoint gathered from the shards is the single-process model, and transformers loads it.
    one_model = AutoModelForImageTextToText.from_pretrained(tmp_path / "single" / "epoch_1_step_6" / "model")
    two_model = AutoModelForImageTextToText.from_pretrained(tmp_path / "multi" / "epoch_1_step_6" / "model")
    for (name, a), (_, b) in zip(one_model.state_dict().items(), two_model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)


def test_cli_preview_and_the_reference_recipe_name(tiny_vlm_dirs: dict[str, Path], shapes_data: Path, tmp_path: Path):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_vlm_dirs["llava"], shapes_data, tmp_path / "ckpt")
    preview = subprocess.run(
        cli_command("vlm", "preview", "-c", str(cfg), "--no-color", "-n", "1"), capture_output=True, text=True, cwd=REPO
    )
    assert preview.returncode == 0, preview.stderr[-3000:]
    assert "USER: <image>x16" in preview.stdout  # the image's 16 tokens, shown once
    assert "[[ A red circle.</s>]]" in preview.stdout  # the answer and its end-of-turn token carry the loss

    reference_style = tmp_path / "reference.yaml"
    recipe = "recipe:\n  _target_: nemo_automodel.recipes.vlm.finetune.FinetuneRecipeForVLM\n"
    reference_style.write_text(recipe + cfg.read_text())
    dry_run = subprocess.run(cli_command(str(reference_style), "--dry-run"), capture_output=True, text=True, cwd=REPO)
    assert dry_run.returncode == 0, dry_run.stderr[-3000:]
    assert "would run automodel.recipes.vlm.finetune.main" in dry_run.stdout


@pytest.mark.parametrize("example", sorted((REPO / "examples" / "vlm").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_validates(example: Path):
    finetune.validate(load_config(example))
