import json
import logging
import os
import signal
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from automodel.components.training import ShutdownSignal, TrainingError


def wait_for(predicate, timeout: float = 5.0) -> bool:
    # a signal sent to the own process is handled at the next bytecode boundary of the main thread
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_signal_sets_the_flag_logs_once_and_uninstall_restores(caplog):
    previous = signal.getsignal(signal.SIGUSR1)
    with caplog.at_level(logging.WARNING), ShutdownSignal() as shutdown:
        assert not shutdown.requested and not shutdown.any_rank_requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert wait_for(lambda: shutdown.requested)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal: still alive, logged only once
        time.sleep(0.05)
        assert shutdown.received_signal == signal.SIGUSR1
        assert shutdown.any_rank_requested()
    assert caplog.text.count("received SIGUSR1") == 1 and "received SIGTERM" not in caplog.text
    assert signal.getsignal(signal.SIGUSR1) == previous
    shutdown.uninstall()  # idempotent


def test_signal_names_are_accepted():
    shutdown = ShutdownSignal(signals=["sigusr2"])
    try:
        assert shutdown.signals == (signal.SIGUSR2,)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert wait_for(lambda: shutdown.requested)
    finally:
        shutdown.uninstall()
    with pytest.raises(TrainingError, match="unknown signal name 'SIGNOPE'"):
        ShutdownSignal(signals=["SIGNOPE"])


def _two_ranks(rank: int, tmp_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_dir}/init", rank=rank, world_size=2)
    try:
        with ShutdownSignal() as shutdown:
            first = shutdown.any_rank_requested()
            if rank == 1:
                os.kill(os.getpid(), signal.SIGUSR1)
                wait_for(lambda: shutdown.requested)
            second = shutdown.any_rank_requested()
            result = [first, shutdown.requested, second]
        with open(os.path.join(tmp_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_any_rank_requested_agrees_across_ranks(tmp_path):
    mp.spawn(_two_ranks, args=(str(tmp_path),), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    # only rank 1 got the signal, yet both ranks see the request
    assert results == [[False, False, True], [False, True, True]]
