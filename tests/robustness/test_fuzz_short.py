"""A short libFuzzer campaign as part of the test suite: `Fuzz/run.sh all 10`.

Builds the fuzz package (Fuzz/, `swift build -c debug --sanitize=fuzzer --scratch-path
.build-fuzz`; the first build takes a few minutes, later ones are incremental) and runs each
target for 10 s on a copy of its committed seed corpus. A crash, trap, hang or property
violation fails the test; the reproducer is left in Fuzz/artifacts/. See docs/fuzzing.md.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("swift") is None, reason="swift toolchain not installed")
def test_fuzz_targets_run_clean_for_10s_each():
    proc = subprocess.run([str(REPO / "Fuzz" / "run.sh"), "all", "10"], cwd=REPO / "Fuzz",
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    print(proc.stdout)
    assert proc.returncode == 0, f"Fuzz/run.sh all 10 exited {proc.returncode}:\n{proc.stdout[-4000:]}"
    for target in ("FuzzSTOMPDecoder", "FuzzRESPParser", "FuzzAPIJSON"):
        assert f"== {target} for 10s" in proc.stdout
