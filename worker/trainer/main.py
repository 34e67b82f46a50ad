"""`loraplex trainer`: run one trainer process from a config file, with SIGTERM handling.

Exit codes (the operator reads them from the pod; docs/trainer.md):

- 0  every adapter was published (a warm trainer: idle for idleSeconds);
- 1  anything unexpected (a crash: retry with back-off; the last checkpoints stand);
- 2  the config file is missing or invalid (nothing ran);
- 3  at least one adapter failed for good (its `failed` event names the reason);
- 75 stopped by SIGTERM/SIGINT after checkpointing every unfinished adapter:
     run the same config again to resume (EX_TEMPFAIL).

On SIGTERM the current step finishes, every unfinished adapter writes its
checkpoint, and the process exits 75, all within `gracePeriodSeconds` as long
as one step plus one checkpoint fit in it. A second signal, or the grace period
running out first, exits at once with 75 (the last periodic checkpoints stand).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from loraplex.api.trainer import EXIT_CONFIG, EXIT_PREEMPTED
from loraplex.worker.trainer.config import ConfigError, TrainerConfig
from loraplex.worker.trainer.progress import Event, JsonLines
from loraplex.worker.trainer.training import StopFlag, Trainer
from loraplex.worker.trainer.warm import WarmTrainer


def install_stop_handlers(stop: StopFlag, grace_seconds: float, sink: JsonLines) -> None:
    """SIGTERM/SIGINT ask for a checkpoint and a clean stop; a watchdog enforces the grace period."""

    def hard_exit() -> None:
        sink(Event("finished", exit_code=EXIT_PREEMPTED, message="stopped before the final checkpoint"))
        os._exit(EXIT_PREEMPTED)

    def handler(signum: int, _: FrameType | None) -> None:
        if stop.requested:
            hard_exit()
        stop.request()
        timer = threading.Timer(grace_seconds, hard_exit)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(config_path: Path, threads: int | None = None) -> int:
    """Run the trainer that `config_path` describes; returns the process exit code."""
    try:
        config = TrainerConfig.load(config_path)
        if threads:
            config = config.model_copy(update={"threads": threads})
    except ConfigError as error:
        JsonLines(sys.stdout)(
            Event("failed", reason="ConfigInvalid", message=str(error), exit_code=EXIT_CONFIG)
        )
        return EXIT_CONFIG
    stop = StopFlag()
    sink = JsonLines(sys.stdout)
    install_stop_handlers(stop, config.grace_period_seconds, sink)
    if config.tenants_file is not None:
        return WarmTrainer(config, sink, stop).run()
    return Trainer(config, sink, stop).run().exit_code  # the operator reads progress from stdout
