"""The `automodel` command: grammar, validate / preview / dry-run, and one clear line for each user mistake."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from automodel.cli.app import main
from automodel.recipes.llm.tests.conftest import REPO, build_tiny_model, write_config


@pytest.fixture()
def cfg(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def expect_user_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return err[err.index("error:") :]


# --- grammar -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["llm", "--help"], ["llm", "finetune", "--help"], ["prepare", "--help"]])
def test_help_on_every_level(capsys, argv):
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and "usage:" in out


def test_validate_ok_and_overrides(capsys, cfg):
    code, out, _ = run_cli(
        capsys, "llm", "validate", "-c", str(cfg), "--step_scheduler.max_steps", "20", "--optimizer.lr=3e-5"
    )
    assert code == 0 and "OK" in out


def test_dry_run_prints_resolved_config_with_placeholders(capsys, cfg, monkeypatch):
    monkeypatch.setenv("MY_SECRET_TOKEN", "s3cr3t-value")
    text = cfg.read_text() + "wandb:\n  project: demo\n  name: ${MY_SECRET_TOKEN}\n  mode: offline\n"
    cfg.write_text(text)
    code, out, _ = run_cli(
        capsys,
        "llm",
        "finetune",
        "-c",
        str(cfg),
        "--dry-run",
        "--step_scheduler.max_steps",
        "7",
        "--nproc-per-node",
        "2",
    )
    assert code == 0
    assert "max_steps: 7" in out and "${MY_SECRET_TOKEN}" in out and "s3cr3t-value" not in out
    assert "torch.distributed.run" in out and "--nproc-per-node=2" in out


def test_env_default_interpolation(capsys, cfg, monkeypatch):
    monkeypatch.delenv("AM_TEST_STEPS", raising=False)
    cfg.write_text(cfg.read_text().replace("max_steps: 6", "max_steps: ${AM_TEST_STEPS,11}"))
    code, out, _ = run_cli(capsys, "llm", "finetune", "-c", str(cfg), "--dry-run")
    assert code == 0 and "${AM_TEST_STEPS,11}" in out


def test_preview_highlights_supervised_tokens(capsys, cfg):
    code, out, _ = run_cli(capsys, "llm", "preview", "-c", str(cfg), "--num-samples", "1", "--no-color")
    assert code == 0
    # The answer and the end-of-turn token carry loss; the prompt does not.
    header, body = out.split("\n", 1)
    assert "supervised" in header
    assert "[[" in body and "<|im_end|>]]" in body
    assert body.index("Context:") < body.index("[[")


def test_newer_grammar_with_recipe_key(capsys, cfg):
    cfg.write_text("recipe: TrainFinetuneRecipeForNextTokenPrediction\n" + cfg.read_text())
    code, out, _ = run_cli(capsys, str(cfg), "--dry-run")
    assert code == 0 and "would run automodel.recipes.llm.finetune.main" in out
    cfg.write_text(cfg.read_text().replace("TrainFinetuneRecipeForNextTokenPrediction", "NoSuchRecipe"))
    assert "is not a known recipe" in expect_user_error(capsys, str(cfg), "--dry-run")


# --- bad input: one line, exit 2, nothing lost ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["--stepscheduler.max_steps", "3"], "stepscheduler: unknown top-level section.*did you mean 'step_scheduler'"),
        (["--step_scheduler.max_step", "3"], "step_scheduler.max_step.*did you mean 'max_steps'"),
        (["--loss_fn._target_", "os.system"], "loss_fn._target_.*not in the allowlist"),
        (["--optimizer.lr", "fast"], "optimizer.lr"),
        (
            ["--step_scheduler.global_batch_size", "5"],
            r"global_batch_size\(5\) must be a multiple of local_batch_size\(2\)",
        ),
        (["--packed_sequence.split_across_pack", "true"], "split_across_pack: true is not supported"),
    ],
)
def test_config_mistakes_are_reported_before_anything_runs(capsys, cfg, overrides, match):
    import re

    message = expect_user_error(capsys, "llm", "finetune", "-c", str(cfg), *overrides)
    assert re.search(match, message), message
    assert not (cfg.parent / "ckpt").exists()


def test_missing_config_file(capsys, tmp_path):
    assert "not found" in expect_user_error(capsys, "llm", "finetune", "-c", str(tmp_path / "nope.yaml"))


def test_missing_model_path(capsys, cfg, tmp_path):
    message = expect_user_error(
        capsys, "llm", "finetune", "-c", str(cfg), "--model.pretrained_model_name_or_path", str(tmp_path / "no_model")
    )
    assert "does not exist" in message


def test_unreachable_hub_model(capsys, cfg, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = expect_user_error(
        capsys, "llm", "finetune", "-c", str(cfg), "--model.pretrained_model_name_or_path", "no-such-org/no-such-model"
    )
    assert "could not load 'no-such-org/no-such-model' from the Hugging Face Hub" in message


def test_missing_dataset_file(capsys, cfg, tmp_path):
    message = expect_user_error(
        capsys, "llm", "finetune", "-c", str(cfg), "--dataset.dataset_name", str(tmp_path / "missing.jsonl")
    )
    assert "missing.jsonl" in message and "does not exist" in message


def test_dataset_without_the_mapped_columns(capsys, cfg, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n")
    cfg.write_text(
        cfg.read_text()
        .split("validation_dataset:")[0]
        .replace(
            "  _target_: automodel.components.datasets.llm.squad.make_squad_dataset\n  dataset_name:",
            "  _target_: automodel.components.datasets.llm.column_mapped_text_instruction_dataset."
            "ColumnMappedTextInstructionDataset\n  column_mapping: {question: prompt, answer: output}\n"
            "  path_or_dataset_id:",
        )
        .replace(str(REPO / "examples/llm/data/facts_squad/train.jsonl"), str(data))
        + "optimizer:\n  lr: 1e-3\n"
    )
    message = expect_user_error(capsys, "llm", "finetune", "-c", str(cfg))
    assert "'prompt'" in message and "instruction" in message


def test_prompt_longer_than_max_length(capsys, cfg):
    message = expect_user_error(capsys, "llm", "finetune", "-c", str(cfg), "--dataset.seq_length", "24")
    assert "row 0" in message and "seq_length=24" in message and "on_overflow: drop" in message


def test_sample_without_supervised_token(capsys, cfg, tmp_path):
    data = tmp_path / "empty_answer.jsonl"
    row = {
        "context": "The sky is blue.",
        "question": "What colour is the sky?",
        "answers": {"text": [""], "answer_start": [0]},
    }
    data.write_text(json.dumps(row) + "\n")
    message = expect_user_error(capsys, "llm", "finetune", "-c", str(cfg), "--dataset.dataset_name", str(data))
    assert "row 0" in message and "no answer text" in message


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_checkpoint_dir_of_a_different_model_is_refused_and_left_intact(capsys, cfg, tmp_path):
    code, _, err = run_cli(
        capsys,
        "llm",
        "finetune",
        "-c",
        str(cfg),
        "--step_scheduler.max_steps",
        "2",
        "--step_scheduler.val_every_steps",
        "none",
    )
    assert code == 0, err
    before = _digest(tmp_path / "ckpt")
    other = build_tiny_model(tmp_path / "other_model", hidden_size=32)
    message = expect_user_error(
        capsys,
        "llm",
        "finetune",
        "-c",
        str(cfg),
        "--model.pretrained_model_name_or_path",
        str(other),
        "--step_scheduler.max_steps",
        "4",
    )
    assert "different model" in message and "checkpoint_dir" in message
    assert _digest(tmp_path / "ckpt") == before


def test_no_traceback_in_a_real_process(cfg):
    proc = subprocess.run(
        [sys.executable, "-m", "automodel", "llm", "finetune", "-c", str(cfg), "--step_scheduler.max_step", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error:"), proc.stderr


def test_peft_merge_command(capsys, cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg.write_text(cfg.read_text() + "peft:\n  target_modules: ['*_proj']\n  dim: 4\n")
    code, _, err = run_cli(
        capsys,
        "llm",
        "finetune",
        "-c",
        str(cfg),
        "--step_scheduler.max_steps",
        "2",
        "--step_scheduler.val_every_steps",
        "none",
    )
    assert code == 0, err
    adapter = tmp_path / "ckpt" / "epoch_0_step_2" / "model"
    code, out, err = run_cli(capsys, "peft", "merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged"))
    assert code == 0 and "Merged model written" in out, err
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.num_hidden_layers == 2
    # Merging again into the same (now non-empty) folder is refused, and nothing is overwritten.
    assert "merged" in expect_user_error(
        capsys, "peft", "merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged")
    )
