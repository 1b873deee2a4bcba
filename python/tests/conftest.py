import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def tidegauge_bin() -> Path:
    """The command-line binary the results are compared with (built by scripts/test)."""
    path = Path(os.environ.get("TIDEGAUGE_BIN", REPO / "target" / "debug" / "tidegauge"))
    assert path.is_file(), f"{path} missing: build it with `cargo build -p tidegauge`"
    return path


@pytest.fixture(scope="session")
def w1_200k(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w1") / "w1.jsonl"
    subprocess.run([sys.executable, str(SHARED / "bench" / "w1_gen.py"), "200000", str(out)], check=True)
    return out
