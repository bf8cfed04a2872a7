"""The trainer prepares each next step's batches (and counts their tokens) while the device still runs the step,
before the step waits for its loss: the host's data work no longer leaves the GPU idle at every step boundary."""

import json

from tests.launch import TINY_LLAMA, TRAIN, torchrun

SCRIPT = r"""
import json, os, runpy, sys
from megatron.arguments import parse_args
from megatron.training.trainer import Trainer, initialize_distributed

entry = runpy.run_path("pretrain_gpt.py")
cfg = parse_args(sys.argv[1:])
tokenizer = entry["build_tokenizer"](cfg)
cfg = cfg.resolve(int(os.environ.get("WORLD_SIZE", "1")), None if tokenizer is None else tokenizer.vocab_size)
device = initialize_distributed(cfg)
train_ds, valid_ds, eod = entry["build_datasets"](cfg, tokenizer)
trainer = Trainer(cfg, train_ds, valid_ds, eod_token=eod, device=device)
events = []
of_step, step = trainer.batches.of_step, trainer.step

def logged_of_step(ds, n, gas):
    events.append(["batches", n])
    return of_step(ds, n, gas)

class LoggedStep:
    def __getattr__(self, name):
        return getattr(step, name)

    def __call__(self, batches, iteration, *args, **kwargs):
        out = step(batches, iteration, *args, **kwargs)
        events.append(["step done", iteration])
        return out

trainer.batches.of_step, trainer.step = logged_of_step, LoggedStep()
records = trainer.train(until=1) + trainer.train()  # as bench/profile_step.py: warm-up steps, then the rest
print("EVENTS " + json.dumps({"events": events, "losses": [r["lm_loss"] for r in records]}))
"""


def test_next_batches_are_prepared_before_the_step_waits(tmp_path):
    script = tmp_path / "lookahead.py"
    script.write_text(SCRIPT)
    args = [*TINY_LLAMA, *TRAIN, "--train-iters", "3", "--eval-interval", "0"]
    proc = torchrun(1, args, script=script, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("EVENTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    got = json.loads(lines[-1][len("EVENTS ") :])
    # each step's batches once, in order, the next one before the current step returns (also across the two calls);
    # none past the last step
    assert got["events"] == [["batches", 0], ["batches", 1], ["step done", 0], ["batches", 2], ["step done", 1],
                             ["step done", 2]]  # fmt: skip
    assert len(got["losses"]) == 3
