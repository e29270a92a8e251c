"""The promises the README makes: its two commands, CI running the same test command, the sample."""

from __future__ import annotations

import re

from faextract.paths import PROJECT_ROOT, SAMPLE_CHECKPOINT, SAMPLE_CUBE


def _readme_commands() -> list[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    main_cmd, test_cmd = _readme_commands()
    assert "faextract embed" in main_cmd and "torch==2.13.0" in main_cmd
    assert "pytest" in test_cmd
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci, "the README's test command must be what CI runs"


def test_bundled_sample_is_small_and_present():
    assert SAMPLE_CUBE.exists() and SAMPLE_CUBE.stat().st_size <= 5 * 2**20
    assert SAMPLE_CHECKPOINT.exists() and SAMPLE_CHECKPOINT.stat().st_size <= 5 * 2**20


def test_bundled_checkpoint_matches_the_sample_cube():
    from faextract.checkpoint import load_checkpoint
    from faextract.data import open_cube
    from faextract.embed import check_compatible

    ckpt = load_checkpoint(SAMPLE_CHECKPOINT)
    check_compatible(ckpt, open_cube(SAMPLE_CUBE), str(SAMPLE_CUBE))
    assert "optimizer" not in ckpt, "the bundled checkpoint is exported for inference"
