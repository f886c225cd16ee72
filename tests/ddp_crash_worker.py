"""A pretraining process for tests/test_ddp.py that crashes on one rank at a given step (fault injection).

python tests/ddp_crash_worker.py raise|stall|kill CRASH_RANK CRASH_STEP PRETRAIN_ARGS...: runs `pretext.pretrain.main`
with the trainer's step patched so that rank CRASH_RANK raises (hangs, or dies of SIGKILL) after CRASH_STEP steps; the other ranks
carry on.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def main() -> int:
    from pretext.engine import trainer
    from pretext.pretrain import main as pretrain_main

    mode, crash_rank, crash_step, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    original = trainer.Trainer._train_step

    def step(self, *a, **k):
        if self.env.rank == crash_rank and self.step >= crash_step:
            if mode == "stall":
                time.sleep(3600)
            if mode == "kill":  # no exception handler, no atexit: the process is simply gone
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault on rank {crash_rank} at step {self.step}")
        return original(self, *a, **k)

    trainer.Trainer._train_step = step
    return pretrain_main(args)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
