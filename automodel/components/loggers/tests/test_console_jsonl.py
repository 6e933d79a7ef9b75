import io
import json
import math

import numpy as np
import pytest
import torch

from automodel.components.loggers import (
    ConsoleLogger,
    JSONLLogger,
    LoggerError,
    MetricLogger,
    MultiLogger,
    build_loggers,
    to_json_safe,
)

TRAIN = {
    "loss": 1.23454,
    "lr": 1e-5,
    "grad_norm": 3.2109,
    "tokens_per_s": 411.7,
    "peak_memory_gib": 1.2345,
    "mfu": 0.0312,
    "num_label_tokens": 812,
}


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_console_line_format_and_cadence():
    stream = io.StringIO()
    console = ConsoleLogger(60, log_every_steps=4, stream=stream)
    assert console.progress_bar is False  # not a TTY: no bar, lines only
    for step in (11, 12, 13, 60):
        console.log(TRAIN, step)
    console.log({"num_tokens": 5120, "ppl": 2.2535, "loss": 0.81234}, 12, prefix="val")
    console.close()
    assert stream.getvalue().splitlines() == [
        "step 12/60 | loss 1.2345 | lr 1.00e-05 | grad_norm 3.21 | tok/s 412 | mem 1.23 GiB | mfu 3.1% | sup_tok 812",
        "step 60/60 | loss 1.2345 | lr 1.00e-05 | grad_norm 3.21 | tok/s 412 | mem 1.23 GiB | mfu 3.1% | sup_tok 812",
        "val step 12 | loss 0.8123 | ppl 2.25 | tokens 5120",
    ]


def test_console_unknown_keys_tensors_and_nan():
    stream = io.StringIO()
    console = ConsoleLogger(None, stream=stream)
    console.log({"loss": torch.tensor(float("nan")), "custom": 0.123456, "count": 3, "tag": "x"}, 1)
    assert stream.getvalue() == "step 1 | loss nan | custom 0.1235 | count 3 | tag x\n"


def test_console_progress_bar_on_a_terminal_and_resume():
    stream = _Terminal()
    console = ConsoleLogger(10, stream=stream)
    console.resume(4)
    console.log(TRAIN, 5)
    bar = console._bar
    assert (bar.n, bar.total) == (5, 10)
    console.close()
    out = stream.getvalue()
    assert "5/10" in out and "loss 1.2345 | lr 1.00e-05 | grad_norm 3.21 | tok/s 412" in out
    assert "step 5/10 | loss 1.2345" in out


def test_console_other_ranks_print_nothing():
    stream = _Terminal()
    console = ConsoleLogger(10, rank=1, stream=stream)
    console.log(TRAIN, 1)
    console.log(TRAIN, 1, prefix="val")
    console.close()
    assert stream.getvalue() == ""
    with pytest.raises(LoggerError, match="log_every_steps=0 must be >= 1"):
        ConsoleLogger(10, log_every_steps=0)


def test_jsonl_appends_flushed_json_safe_records(tmp_path):
    path = tmp_path / "run" / "logs" / "metrics.jsonl"
    jsonl = JSONLLogger(path)
    jsonl.log({"loss": torch.tensor(2.5), "lr": np.float32(0.5), "grad_norm": float("inf"), "n": np.int64(3)}, 1)
    # Flushed per line: readable before close (a killed run keeps its finished lines).
    first = json.loads(path.read_text().splitlines()[0])
    assert {k: first[k] for k in ("step", "split", "loss", "lr", "grad_norm", "n")} == {
        "step": 1,
        "split": "train",
        "loss": 2.5,
        "lr": 0.5,
        "grad_norm": None,
        "n": 3,
    }
    assert list(first)[:2] == ["step", "split"] and list(first)[-1] == "time"
    assert abs(first["time"] - __import__("time").time()) < 60
    jsonl.log({"loss": float("nan")}, 1, prefix="val")
    jsonl.close()
    JSONLLogger(path).log({"loss": 1.0}, 2)  # a resumed run appends
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["split"], r["loss"]) for r in rows] == [
        (1, "train", 2.5),
        (1, "val", None),
        (2, "train", 1.0),
    ]


def test_jsonl_resume_drops_what_the_killed_run_logged_after_the_checkpoint(tmp_path):
    # a run logged steps 1..5 (a validation at 4), checkpointed at step 3, and was killed mid-write of step 6
    path = tmp_path / "metrics.jsonl"
    jsonl = JSONLLogger(path)
    for step in range(1, 6):
        jsonl.log({"loss": float(step)}, step)
    jsonl.log({"loss": 0.5}, 3, prefix="val")
    jsonl.log({"loss": 0.4}, 4, prefix="val")
    jsonl.close()
    with path.open("ab") as f:
        f.write(b'{"step": 6, "split": "train", "loss": "\xc3')  # cut inside a UTF-8 character
    resumed = JSONLLogger(path)
    resumed.resume(3)
    for step in (4, 5):  # the resumed run logs steps 4 and 5 again
        resumed.log({"loss": step + 0.1}, step)
    resumed.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["split"], r["loss"]) for r in rows] == [
        (1, "train", 1.0),
        (2, "train", 2.0),
        (3, "train", 3.0),
        (3, "val", 0.5),
        (4, "train", 4.1),
        (5, "train", 5.1),
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    # nothing to drop: the file is left alone; another rank's logger does nothing
    before = path.stat().st_mtime_ns, path.stat().st_ino
    JSONLLogger(path).resume(5)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    JSONLLogger(path, rank=1).resume(0)
    assert len(path.read_text().splitlines()) == 6


def test_multilogger_resume_reaches_the_jsonl_logger(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MultiLogger([JSONLLogger(path)]) as loggers:
        for step in (1, 2, 3):
            loggers.log({"loss": 1.0}, step)
    with MultiLogger([JSONLLogger(path), ConsoleLogger(10, stream=io.StringIO())]) as loggers:
        loggers.resume(1)
        loggers.log({"loss": 2.0}, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_jsonl_other_ranks_write_nothing_and_bad_path(tmp_path):
    JSONLLogger(tmp_path / "metrics.jsonl", rank=1).log({"loss": 1.0}, 1)
    assert not (tmp_path / "metrics.jsonl").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(LoggerError, match=r"cannot open the metrics file .*file/metrics.jsonl"):
        JSONLLogger(tmp_path / "file" / "metrics.jsonl")


def test_to_json_safe():
    value = {"t": torch.tensor([1.0, math.inf]), "a": np.arange(2), "nested": [np.float64("nan"), (1, "x")], 3: object}
    safe = to_json_safe(value)
    assert safe["t"] == [1.0, None] and safe["a"] == [0, 1] and safe["nested"] == [None, [1, "x"]]
    assert safe["3"].startswith("<class")
    json.dumps(safe, allow_nan=False)


def test_multi_logger_fans_out_and_build_loggers(tmp_path):
    stream = io.StringIO()
    loggers = build_loggers(3, jsonl_path=tmp_path / "m.jsonl", stream=stream)
    assert all(isinstance(x, MetricLogger) for x in loggers.loggers)
    with loggers:
        loggers.resume(0)
        loggers.log_config({"a": 1})
        loggers.log({"loss": 1.5}, 1)
    assert stream.getvalue() == "step 1/3 | loss 1.5000\n"
    assert json.loads((tmp_path / "m.jsonl").read_text())["loss"] == 1.5
    assert [type(x).__name__ for x in loggers.loggers] == ["ConsoleLogger", "JSONLLogger"]


def test_multi_logger_closes_every_logger_even_if_one_fails():
    closed = []

    class Broken:
        def log(self, metrics, step, *, prefix="train"): ...
        def log_config(self, config): ...
        def close(self):
            raise RuntimeError("boom")

    class Fine(Broken):
        def close(self):
            closed.append(True)

    with pytest.raises(RuntimeError, match="boom"):
        MultiLogger([Broken(), Fine()]).close()
    assert closed == [True]
