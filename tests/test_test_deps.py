"""scripts/test-deps.sh, what `make test` and `make test-fast` run before the tests: installs
Debian's chromium and a Java runtime when they are missing and it can, else one error line.

Each case runs the script with PATH holding only shims written here, so chromium, java, id,
sudo and apt-get are whatever the case says, and nothing is ever installed for real. Every shim
records its call in calls.log.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPT = REPO / "scripts" / "test-deps.sh"
BASH = shutil.which("bash")
INSTALL = "sudo apt-get update && sudo apt-get install -y chromium default-jre-headless"


def shim(bin_dir, name: str, body: str = "") -> None:
    path = bin_dir / name
    path.write_text(f'#!{BASH}\necho "{name} $*" >> "$CALLS"\n{body}\n')
    path.chmod(0o755)


def machine(tmp_path, uid: int = 1000, sudo: str | None = None, apt: str = "",
            tools: tuple = ()) -> dict:
    """A PATH of shims: `id -u` says uid; sudo (absent if None) runs SUDO's body; apt-get runs
    APT's; TOOLS are installed already."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim(bin_dir, "id", f"echo {uid}")
    if sudo is not None:
        shim(bin_dir, "sudo", sudo)
    shim(bin_dir, "apt-get", apt)
    shim(bin_dir, "env", 'shift; exec "$@"')  # env DEBIAN_FRONTEND=... apt-get ...
    for tool in tools:
        shim(bin_dir, tool)
    return {"PATH": str(bin_dir), "CALLS": str(tmp_path / "calls.log")}


def run(env: dict, *tools: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(SCRIPT), *tools], env=env, capture_output=True, text=True,
                          timeout=60)


def calls(env: dict) -> list[str]:
    log = Path(env["CALLS"])
    return log.read_text().splitlines() if log.exists() else []


# apt-get's shim "installs" a package by putting its tool on PATH (chmod by its full path: the
# shims' PATH has no chmod).
APT_INSTALLS = ('[ "$1" = install ] && for p in "$@"; do case $p in '
                'chromium) t=chromium;; default-jre-headless) t=java;; *) continue;; esac; '
                f': > "${{0%/*}}/$t"; {shutil.which("chmod")} +x "${{0%/*}}/$t"; done; true')


@pytest.mark.parametrize("sudo", [None, "exit 1"], ids=["no-sudo", "sudo-asks-a-password"])
def test_without_root_or_sudo_it_stops_with_one_line_naming_the_command(tmp_path, sudo):
    env = machine(tmp_path, sudo=sudo)
    proc = run(env, "chromium", "java")
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert f"'{INSTALL}'" in lines[0]
    assert not any(c.startswith("apt-get") for c in calls(env))


def test_only_the_missing_tool_is_named(tmp_path):
    env = machine(tmp_path, tools=("java",))
    proc = run(env, "chromium", "java")
    assert proc.returncode == 1
    assert "'sudo apt-get update && sudo apt-get install -y chromium'" in proc.stderr


def test_with_everything_there_it_does_nothing(tmp_path):
    env = machine(tmp_path, uid=0, sudo="", tools=("chromium", "java"))
    proc = run(env, "chromium", "java")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert calls(env) == []  # not even `id`: nothing to install, no one to ask


def test_as_root_it_installs_the_missing_packages(tmp_path):
    env = machine(tmp_path, uid=0, apt=APT_INSTALLS)
    proc = run(env, "chromium", "java")
    assert proc.returncode == 0, proc.stderr
    assert calls(env) == ["id -u", "apt-get update -qq",
                          "env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium "
                          "default-jre-headless",
                          "apt-get install -y -qq chromium default-jre-headless"]
    assert run(env, "chromium", "java").stdout == ""  # now present: a second run does nothing


def test_with_passwordless_sudo_it_installs_through_sudo(tmp_path):
    env = machine(tmp_path, sudo='[ "$1" = -n ] && shift; "$@"', apt=APT_INSTALLS)
    proc = run(env, "chromium")
    assert proc.returncode == 0, proc.stderr
    assert "sudo apt-get update -qq" in calls(env)
    assert "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium" in calls(env)
    assert "default-jre-headless" not in " ".join(calls(env))  # java was not asked for


def test_a_failed_install_is_one_error_line_after_apt_gets_own(tmp_path):
    env = machine(tmp_path, uid=0, apt='[ "$1" = install ] && { echo "E: no network" >&2; '
                                         "exit 100; }; true")
    proc = run(env, "chromium")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "E: no network", "error: apt-get could not install chromium (its messages are above)"]


def test_make_test_and_test_fast_check_their_tools_before_the_tests():
    """make -n prints the recipes without running them: the check comes before pytest, and
    test-fast asks for no Java (its pyspark test is a slow one)."""
    for target, tools in (("test", "chromium java"), ("test-fast", "chromium")):
        out = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True,
                             timeout=60).stdout.splitlines()
        check = out.index(f"bash scripts/test-deps.sh {tools}")
        assert check < next(i for i, line in enumerate(out) if "pytest" in line)
