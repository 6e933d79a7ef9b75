"""Resource limits of the LLM recipe: sizes, step counts and rates are refused at validation (one `error:` line, exit
status 2, no traceback); sample lengths are checked against the model's positions and the batch against the dataset
before anything is tokenized or trained; a 10 MB row never becomes a multi-million-token sample; and a loss that
turns NaN stops the run instead of training on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig

from automodel._shared.errors import UserError
from automodel.components.config import ConfigValidationError, load_config
from automodel.components.datasets.llm import squad
from automodel.components.datasets.llm.synthetic import make_synthetic_dataset
from automodel.recipes import _limits
from automodel.recipes.llm import finetune
from automodel.recipes.llm.tests.conftest import DATA, REPO, write_config


@pytest.fixture
def cfg_path(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")


def validation_errors(cfg_path: Path, *overrides: str) -> list[str]:
    with pytest.raises(ConfigValidationError) as info:
        finetune.validate(load_config(cfg_path, list(overrides)))
    return info.value.errors


# --- validation: every bad size or rate is one message naming the key and the value --------------------------------
BUILD_OPTIMIZER = ["--optimizer._target_", "automodel.components.optim.build_optimizer", "--optimizer.name", "adamw"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--optimizer.lr", "nan"], "optimizer.lr: got nan, which no setting accepts; set a finite number"),
        (["--optimizer.lr", "-1e-3"], "optimizer.lr must be a finite number >= 0, got -0.001"),
        (["--optimizer.lr", "inf"], "optimizer.lr must be a finite number >= 0, got inf"),
        (["--optimizer.lr", "true"], "optimizer.lr: expected float or Tensor, got bool True"),
        (["--optimizer.weight_decay", "-0.1"], "optimizer.weight_decay must be a finite number >= 0, got -0.1"),
        (["--optimizer.eps", "-1e-8"], "optimizer.eps must be a finite number >= 0, got -1e-08"),
        (
            ["--optimizer.betas", "[0.9, 1.0]"],
            r"optimizer.betas[1] must be a number in [0, 1) (e.g. [0.9, 0.999]), got 1.0",
        ),
        (
            ["--optimizer.betas", "[0.9]"],
            "optimizer.betas must be a list of two numbers in [0, 1), e.g. [0.9, 0.999], got [0.9]",
        ),
        ([*BUILD_OPTIMIZER, "--optimizer.lr", "nan"], "optimizer.lr: got nan, which no setting accepts"),
        ([*BUILD_OPTIMIZER, "--optimizer.lr", "-2"], "optimizer.lr must be a finite number >= 0, got -2"),
        ([*BUILD_OPTIMIZER, "--optimizer.betas", "[True, 0.9]"], "optimizer.betas[0] must be a number in [0, 1)"),
        (
            [*BUILD_OPTIMIZER, "--optimizer.lr_multipliers", "{'*embed*': -1}"],
            "optimizer.lr_multipliers['*embed*'] must be a finite number >= 0, got -1",
        ),
        (
            ["--step_scheduler.local_batch_size", "-1"],
            "step_scheduler.local_batch_size must be a positive integer, got -1",
        ),
        (
            ["--step_scheduler.global_batch_size", "0"],
            "step_scheduler.global_batch_size must be a positive integer, got 0",
        ),
        (["--step_scheduler.max_steps", "0"], "step_scheduler.max_steps must be a positive integer or null, got 0"),
        (["--step_scheduler.max_steps", "nan"], "step_scheduler.max_steps: expected int or None, got float nan"),
        (["--step_scheduler.num_epochs", "-1"], "step_scheduler.num_epochs must be a positive integer or null, got -1"),
        (["--step_scheduler.val_every_steps", "0"], "step_scheduler.val_every_steps must be a positive integer"),
        (["--step_scheduler.ckpt_every_steps", "-5"], "step_scheduler.ckpt_every_steps must be a positive integer"),
        (["--lr_scheduler.min_lr", "nan"], "lr_scheduler.min_lr: got nan, which no setting accepts"),
        (["--lr_scheduler.min_lr", "-1e-5"], "lr_scheduler.min_lr must be a finite number >= 0, got -1e-05"),
        (
            ["--lr_scheduler.lr_warmup_steps", "-1"],
            "lr_scheduler.lr_warmup_steps must be an integer >= 0 (optimizer steps)",
        ),
        (["--lr_scheduler.lr_warmup_init", "inf"], "lr_scheduler.lr_warmup_init must be a finite number >= 0, got inf"),
        (
            ["--dataset.seq_length", "-3"],
            "dataset.seq_length must be an integer >= 2 (tokens per sample) or null, got -3",
        ),
        (["--validation_dataset.seq_length", "true"], "validation_dataset.seq_length: expected int or None, got bool"),
        (
            ["--dataset.limit_dataset_samples", "0"],
            "dataset.limit_dataset_samples must be an integer >= 1 (rows to keep)",
        ),
        (
            ["--dataloader.num_workers", "-1"],
            "dataloader.num_workers must be an integer >= 0 (worker processes, 0 for none), got -1",
        ),
        (
            ["--packed_sequence.packed_sequence_size", "-5"],
            "packed_sequence.packed_sequence_size must be an integer >= 2",
        ),
        (
            ["--packed_sequence.packed_sequence_size", "nan"],
            "packed_sequence.packed_sequence_size: expected int, got float nan",
        ),
        (["--seed", "-1"], r"seed: expected an integer in [0, 2**32), got -1"),
        (["--clip_grad_norm.max_norm", "nan"], "clip_grad_norm.max_norm must be > 0 or none, got nan"),
    ],
)
def test_bad_sizes_and_rates_are_one_message_each(cfg_path: Path, overrides: list[str], message: str):
    errors = validation_errors(cfg_path, *overrides)
    assert errors == [errors[0]] and errors[0].startswith(message), errors


def test_nan_anywhere_in_the_yaml_is_an_error(cfg_path: Path):
    text = cfg_path.read_text().replace("  weight_decay: 0.01\n", "  weight_decay: 0.01\n  betas: [0.9, .nan]\n")
    cfg_path.write_text(text + "clip_grad_norm:\n  max_norm: .inf\n")
    assert validation_errors(cfg_path) == ["optimizer.betas[1]: got nan, which no setting accepts; set a finite number"]


def test_every_problem_is_reported_at_once(cfg_path: Path):
    errors = validation_errors(
        cfg_path,
        "--optimizer.lr",
        "nan",
        "--step_scheduler.local_batch_size",
        "-1",
        "--lr_scheduler.lr_warmup_steps",
        "-2",
        "--dataset.seq_length",
        "1",
    )
    assert [error.split(" ")[0].rstrip(":") for error in errors] == [
        "optimizer.lr",
        "step_scheduler.local_batch_size",
        "lr_scheduler.lr_warmup_steps",
        "dataset.seq_length",
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        ["--optimizer.lr", "nan"],
        ["--optimizer.lr", "inf"],
        ["--optimizer.lr=true"],
        ["--step_scheduler.local_batch_size", "-1"],
        ["--lr_scheduler.min_lr", "nan"],
    ],
    ids=["lr_nan", "lr_inf", "lr_bool", "negative_batch", "min_lr_nan"],
)
def test_cli_prints_one_error_line_and_exits_2(cfg_path: Path, capsys, overrides: list[str]):
    with pytest.raises(SystemExit) as exit_info:
        finetune.cli(["-c", str(cfg_path), *overrides])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err
    assert "Traceback" not in err and overrides[0].split("=")[0].lstrip("-") in err
    assert not (cfg_path.parent / "ckpt").exists()  # nothing ran


# --- build time: lengths against the model's positions, the batch against the dataset -------------------------------
@pytest.fixture
def no_tokenizing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the SQuAD builder with one that records its calls: a limit must fail before any row is tokenized."""
    calls: list[str] = []

    def builder(tokenizer, dataset_name="", split="train", seq_length=None, **kwargs):
        calls.append(split)
        raise AssertionError("the dataset was built before the limit was checked")

    monkeypatch.setattr(squad, "make_squad_dataset", builder)
    return calls


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["--dataset.seq_length", "4096"],
            r"dataset.seq_length\(4096\) is larger than the model's max_position_embeddings\(1024\).*"
            r"set dataset.seq_length to at most 1024",
        ),
        (
            ["--packed_sequence.packed_sequence_size", "2048"],
            r"packed_sequence.packed_sequence_size\(2048\) is larger than the model's max_position_embeddings\(1024\)",
        ),
    ],
)
def test_a_length_past_the_model_positions_fails_before_tokenizing(
    cfg_path: Path, no_tokenizing: list[str], overrides: list[str], message: str
):
    with pytest.raises(_limits.LimitError, match=message):
        finetune.main(load_config(cfg_path, overrides))
    assert no_tokenizing == []


def test_a_validation_length_past_the_model_positions_is_an_error(cfg_path: Path):
    with pytest.raises(_limits.LimitError, match=r"validation_dataset.seq_length\(2048\) is larger than"):
        finetune.main(load_config(cfg_path, ["--validation_dataset.seq_length", "2048"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["--dataset.limit_dataset_samples", "3"],
            r"dataset: the training set has 3 sample\(s\), fewer than one global batch of 4 "
            r"\(step_scheduler.global_batch_size\(4\), local_batch_size\(2\) on each of 1 data-parallel rank\(s\)\); "
            r"lower step_scheduler.global_batch_size",
        ),
        (
            ["--dataset.limit_dataset_samples", "6", "--packed_sequence.packed_sequence_size", "1000"],
            r"the training set has 1 packed row\(s\) \(6 samples packed into rows of 1000 tokens\), fewer than one "
            r"global batch of 4 .*a smaller packed_sequence.packed_sequence_size",
        ),
        (
            ["--validation_dataloader.drop_last", "true", "--validation_dataset.limit_dataset_samples", "1"],
            r"validation_dataloader: yields no batch: 1 sample\(s\) on this rank, fewer than "
            r"step_scheduler.local_batch_size\(2\), and validation_dataloader.drop_last drops the partial batch",
        ),
    ],
    ids=["train_smaller_than_a_batch", "packed_rows_smaller_than_a_batch", "validation_dropped_entirely"],
)
def test_a_batch_larger_than_the_dataset_is_an_error(cfg_path: Path, overrides: list[str], message: str):
    with pytest.raises(_limits.LimitError, match=message):
        finetune.main(load_config(cfg_path, ["--checkpoint.enabled", "false", *overrides]))


def test_a_validation_set_smaller_than_a_batch_is_still_evaluated(cfg_path: Path, tmp_path: Path):
    overrides = ["--validation_dataset.limit_dataset_samples", "1", "--step_scheduler.max_steps", "1"]
    summary = finetune.main(load_config(cfg_path, overrides))
    records = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    val = [record for record in records if record["split"] == "val"]
    assert summary["val_loss_before"] > 0 and val and all(record["tokens"] > 0 for record in val)


# --- a 10 MB row with seq_length unset ---------------------------------------------------------------------------
def _rows(n: int) -> list[dict]:
    return [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()[:n]]


def _huge_text() -> str:
    return "The Gorklas is a river of the Lemkost region. " * (10_000_000 // 46)  # 10 MB


def _without_seq_length(cfg_path: Path, dataset_yaml: str, validation_yaml: str) -> Path:
    text = cfg_path.read_text()
    start, end = text.index("dataset:\n"), text.index("dataloader:")
    cfg_path.write_text(text[:start] + dataset_yaml + validation_yaml + text[end:])
    assert "seq_length" not in cfg_path.read_text()
    return cfg_path


def _cli(cfg_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "automodel", "llm", "finetune", "-c", str(cfg_path), *overrides]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)


def test_a_10_mb_row_is_cut_or_dropped_at_the_model_positions(cfg_path: Path, tmp_path: Path):
    rows = _rows(40)
    chat = [
        {
            "messages": [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": row["answers"]["text"][0]},
            ]
        }
        for row in rows
    ]
    chat.insert(
        0, {"messages": [{"role": "user", "content": "Everything?"}, {"role": "assistant", "content": _huge_text()}]}
    )
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chat))
    squad_rows = [{**rows[0], "context": _huge_text()}, *rows[1:20]]
    (tmp_path / "squad.jsonl").write_text("".join(json.dumps(row) + "\n" for row in squad_rows))
    assert (tmp_path / "chat.jsonl").stat().st_size > 10_000_000
    _without_seq_length(
        cfg_path,
        "dataset:\n  _target_: automodel.components.datasets.llm.chat.make_chat_dataset\n"
        f"  path_or_dataset_id: {tmp_path / 'chat.jsonl'}\n",
        "validation_dataset:\n  _target_: automodel.components.datasets.llm.squad.make_squad_dataset\n"
        f"  dataset_name: {tmp_path / 'squad.jsonl'}\n  on_overflow: drop\n",
    )
    proc = _cli(cfg_path, "--step_scheduler.max_steps", "2", "--checkpoint.enabled", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The huge answer is cut at the model's 1024 positions, the huge prompt dropped: no sample of millions of tokens.
    assert "dataset.seq_length is not set: samples are capped at the model's max_position_embeddings (1024 tokens)" in (
        proc.stderr
    )
    assert "validation_dataset.seq_length is not set" in proc.stderr
    assert "chat train: 41 samples, 1 truncated, 0 dropped, max length 1024" in proc.stderr
    assert "squad train: 19 samples, 0 truncated, 1 dropped" in proc.stderr


def test_a_10_mb_prompt_with_truncation_is_one_error_line(cfg_path: Path, tmp_path: Path):
    rows = [{**_rows(1)[0], "context": _huge_text()}, *_rows(20)[1:]]
    (tmp_path / "squad.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = (
        "dataset:\n  _target_: automodel.components.datasets.llm.squad.make_squad_dataset\n"
        f"  dataset_name: {tmp_path / 'squad.jsonl'}\n"
    )
    _without_seq_length(cfg_path, dataset, "")
    proc = _cli(cfg_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        "row 0: the prompt alone is at least 1024 tokens, which leaves no answer token within seq_length=1024"
        in (errors[0])
    )


# --- a loss that turns NaN stops the run --------------------------------------------------------------------------
def test_a_diverging_run_stops_at_the_first_nan_loss(cfg_path: Path, tmp_path: Path):
    overrides = [
        "--optimizer.lr",
        "1e308",
        "--step_scheduler.ckpt_every_steps",
        "1",
        "--step_scheduler.val_every_steps",
        "none",
    ]
    with pytest.raises(UserError, match=r"the training loss is nan at step 3: training diverged; lower optimizer.lr"):
        finetune.main(load_config(cfg_path, overrides))
    # Step 1 is the warmup (lr 0), step 2 applies lr 1e308; nothing is written for the step whose loss is NaN.
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.glob("epoch_*")) == ["epoch_0_step_1", "epoch_0_step_2"]
    assert (ckpt / "LATEST").read_text().strip() == "epoch_0_step_2"


# --- the pieces, on their own -------------------------------------------------------------------------------------
def test_model_max_positions_reads_the_config():
    class Model:
        config = LlamaConfig(max_position_embeddings=333)

    assert _limits.model_max_positions(Model()) == 333
    assert _limits.model_max_positions(object()) is None


def test_length_limit_caps_only_an_unset_length():
    def builder(tokenizer, seq_length=None, on_overflow="truncate"):
        raise AssertionError("never called")

    def no_length(tokenizer, path="x"):
        raise AssertionError("never called")

    assert _limits.length_limit({}, "dataset", 1024, target=builder) == {"seq_length": 1024}
    assert _limits.length_limit({"seq_length": None}, "dataset", 1024, target=builder) == {"seq_length": 1024}
    assert _limits.length_limit({"seq_length": 512}, "dataset", 1024, target=builder) == {}
    assert _limits.length_limit({}, "dataset", 1024, target=no_length) == {}
    assert _limits.length_limit({}, "dataset", None, target=builder) == {}
    # A builder whose default is longer than the model's positions (the synthetic data's 4096) is capped too.
    assert _limits.length_limit({}, "dataset", 1024, target=make_synthetic_dataset) == {"seq_length": 1024}
    assert _limits.length_limit({}, "dataset", 8192, target=make_synthetic_dataset) == {}
    with pytest.raises(_limits.LimitError, match=r"dataset.seq_length\(2048\) is larger than"):
        _limits.length_limit({"seq_length": 2048}, "dataset", 1024, target=builder)


def test_dataset_fits_counts_per_rank_and_global_batch():
    _limits.check_dataset_fits(list(range(8)), train=True, local_batch_size=2, dp_size=2, global_batch_size=8)
    with pytest.raises(_limits.LimitError, match=r"5 sample\(s\), fewer than one global batch of 6 .* 2 data-parallel"):
        _limits.check_dataset_fits(list(range(5)), train=True, local_batch_size=3, dp_size=2, global_batch_size=6)
    with pytest.raises(_limits.LimitError, match="validation_dataset: the dataset has no samples"):
        _limits.check_dataset_fits([], train=False, local_batch_size=3, dp_size=1)
    _limits.check_dataset_fits([1], train=False, local_batch_size=3, dp_size=1)  # evaluated as one partial batch


def test_one_message_per_key():
    errors = ["optimizer.lr: expected float", "optimizer.lr must be finite", "step_scheduler: set max_steps", "x.y: z"]
    assert _limits.one_per_key(errors, ["optimizer", "step_scheduler"]) == [errors[0], errors[2], errors[3]]
