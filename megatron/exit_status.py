"""The exit statuses of ``pretrain_gpt.py``, one meaning each.

``megatron.launch`` passes them on (adding nothing to the ranks' one-line errors), and a
scheduler can act on them: 75 (``EX_TEMPFAIL`` of sysexits.h, "try again later") means the
run saved a checkpoint and stopped before ``--train-iters``, so the job should be requeued and
resumed with ``--load``.
"""

DONE = 0  # --train-iters reached (or --exit-interval), checkpoint saved if --save was given
CRASH = 1  # an uncaught exception (Python's own status, with its traceback), or a rank that lost its peers
CONFIG = 2  # a configuration or data error, named in one line before any training step
STOPPED = 3  # the run stopped itself, named in one line: non-finite steps, or a checkpoint that failed verification
REQUEUE = 75  # saved and stopped early (the --exit-signal-handler signal, or --exit-duration-in-mins): requeue me

REPORTED = (CONFIG, STOPPED)  # the ranks already said why in one line
