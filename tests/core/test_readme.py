"""The README's commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)[:2]


def test_ci_runs_the_readme_test_command_verbatim():
    main_job, test_cmd = _readme_commands()
    assert "examples_deepspeed/quickstart_cpu.sh" in main_job and "pytest" in test_cmd
    assert test_cmd.strip() in (ROOT / ".ci" / "run").read_text()


def test_quickstart_dry_run_uses_sp2_over_two_processes(tmp_path):
    import os
    import subprocess

    e = dict(os.environ, DRY_RUN="1", DATA_PATH="/data/x", TOKENIZER_MODEL="/tok.model", SAVE_DIR=str(tmp_path))
    out = subprocess.run(["bash", str(ROOT / "examples_deepspeed/quickstart_cpu.sh"), "--log-interval", "5"], env=e,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "--nproc_per_node 2" in out and "--ds-sequence-parallel-size 2" in out and "--save" in out
    assert out.strip().endswith("--log-interval 5")
