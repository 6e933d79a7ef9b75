"""The `slurm:` section: defaults, time limits, and one clear error for each mistake (naming the key)."""

from __future__ import annotations

import pytest

from automodel.components.launcher import LaunchError, SlurmConfig, parse_slurm_time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30 * 60),
        ("90:30", 90 * 60 + 30),
        ("04:00:00", 4 * 3600),
        ("1:30:00", 5400),
        ("2-12", 2 * 86400 + 12 * 3600),
        ("1-02:30", 86400 + 2 * 3600 + 30 * 60),
        ("0-00:10:05", 605),
        (" 00:05:00 ", 300),
        ("INFINITE", None),
        ("unlimited", None),
    ],
)
def test_time_formats_slurm_accepts(text, seconds):
    assert parse_slurm_time(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "1:2:3:4", "00:61:00", "00:10:75", "1-25:00", "-5", "1.5", "0", "00:00"])
def test_bad_time_format(text):
    with pytest.raises(LaunchError, match=r"slurm\.time: .* is not a SLURM time limit; use MM, MM:SS, HH:MM:SS"):
        SlurmConfig(time=text)


@pytest.mark.parametrize("value", [5400, 30, 1.5])
def test_numeric_time_must_be_quoted(value):
    # YAML turns an unquoted 1:30:00 into 5400, which SLURM would read as 5400 minutes: refuse numbers.
    with pytest.raises(LaunchError, match=r"slurm\.time: got the number .* quoted string"):
        SlurmConfig(time=value)


def test_defaults_and_processes_per_node():
    config = SlurmConfig.from_dict({}, job_name="llm_finetune")
    assert (config.job_name, config.nodes, config.requeue, config.signal_before_s) == ("llm_finetune", 1, True, 300)
    assert config.processes_per_node() == 1
    assert config.processes_per_node(4) == 4
    assert SlurmConfig(gpus_per_node=8).processes_per_node() == 8
    assert SlurmConfig(gpus_per_node=8).processes_per_node(2) == 2
    assert SlurmConfig(ntasks_per_node=2, gpus_per_node=8).processes_per_node() == 2
    with pytest.raises(LaunchError, match=r"slurm\.ntasks_per_node is 2 but --nproc-per-node is 4"):
        SlurmConfig(ntasks_per_node=2).processes_per_node(4)


@pytest.mark.parametrize("nodes", [0, -1, "2", 1.5, True])
def test_nodes_must_be_a_positive_integer(nodes):
    with pytest.raises(LaunchError, match=r"slurm\.nodes: expected an integer >= 1"):
        SlurmConfig(nodes=nodes)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(LaunchError, match=r"slurm\.gpus_per_nod: unknown key \(did you mean 'gpus_per_node'\?\)"):
        SlurmConfig.from_dict({"gpus_per_nod": 8})


def test_every_problem_is_reported_at_once():
    with pytest.raises(LaunchError) as info:
        SlurmConfig(nodes=0, time="soon", master_port=70000, job_name="my job", extra_sbatch_args=["exclusive"])
    message = str(info.value)
    for key in ("slurm.nodes", "slurm.time", "slurm.master_port", "slurm.job_name", "slurm.extra_sbatch_args"):
        assert key in message, message


def test_signal_must_come_before_the_time_limit():
    with pytest.raises(LaunchError, match=r"slurm\.signal_before_s: .* time '00:04:00' is only 240s"):
        SlurmConfig(time="00:04:00", signal_before_s=300)
    assert SlurmConfig(time="00:04:00", signal_before_s=60).signal_before_s == 60


def test_the_default_warning_scales_with_a_short_time_limit(caplog):
    # The seed document's own section: a 5-minute job. Only an explicit signal_before_s is checked against time.
    caplog.set_level("INFO")
    assert SlurmConfig(time="00:05:00").signal_before_s == 30
    assert "a tenth of the limit" in caplog.text
    assert SlurmConfig(time="00:20:00").signal_before_s == 120
    assert SlurmConfig(time="04:00:00").signal_before_s == 300
    assert SlurmConfig().signal_before_s == 300


def test_literal_secret_in_env_vars_is_refused():
    with pytest.raises(LaunchError, match=r"slurm\.env_vars\.WANDB_API_KEY: looks like a secret .* export it in your"):
        SlurmConfig(env_vars={"WANDB_API_KEY": "abc123"})
    with pytest.raises(LaunchError, match=r"slurm\.env_vars\.MY_SERVICE_TOKEN: looks like a secret"):
        SlurmConfig(env_vars={"MY_SERVICE_TOKEN": "abc123"})
    # A placeholder is expanded by the job's shell, never written resolved: allowed.
    assert SlurmConfig(env_vars={"HF_TOKEN": "${HF_TOKEN}"}).env_vars == {"HF_TOKEN": "${HF_TOKEN}"}


def test_bad_env_var_name():
    with pytest.raises(LaunchError, match=r"slurm\.env_vars\.1BAD: not a valid environment variable name"):
        SlurmConfig(env_vars={"1BAD": "x"})
