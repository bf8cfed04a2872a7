"""Fixtures shared across the test directories."""

import pytest

from tests.launch import TINY_GPT, TINY_LLAMA, TRAIN, train_records

SHAPES = {"gpt": TINY_GPT, "llama": TINY_LLAMA}


@pytest.fixture(scope="session")
def sp1_reference(tmp_path_factory):
    """The plain SP=1 ZeRO-1 run (TRAIN) of each tiny shape, which the SP and ALST equivalence tests compare
    against; trained once per session."""
    tmp = tmp_path_factory.mktemp("sp1_reference")
    refs = {name: train_records(tmp, f"{name}_sp1", 1, shape + TRAIN + ["--zero-stage", "1"])
            for name, shape in SHAPES.items()}  # fmt: skip
    for name, ref in refs.items():
        assert ref[-1]["lm_loss"] < ref[0]["lm_loss"], f"the {name} reference run must learn something"
    return refs
