"""tests/references.py: a missing outside reference skips a user's test but fails it in CI."""
import subprocess
import sys
import textwrap


def _run(tmp_path, ci: str) -> subprocess.CompletedProcess:
    test = tmp_path / "test_needs_reference.py"
    test.write_text(textwrap.dedent("""
        from references import require

        def test_it():
            require("a_module_that_does_not_exist")
    """))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(__import__("pathlib").Path(__file__).parent), "CI": ci}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-c", "/dev/null", str(test)], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_skips_for_a_user_and_fails_in_ci(tmp_path):
    user = _run(tmp_path, "")
    assert user.returncode == 0 and "1 skipped" in user.stdout, user.stdout
    ci = _run(tmp_path, "true")
    assert ci.returncode == 1 and "1 failed" in ci.stdout and "CI needs this outside reference" in ci.stdout, ci.stdout
