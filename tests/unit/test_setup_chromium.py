"""Issue #23: the set-up installs the browser the console's tests need, or says why not and lets them skip.

scripts/ensure-chromium.sh runs in a copy of the scripts folder with stand-ins for id, sudo and apt-get on PATH, so
no test installs anything."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(
    tmp: Path, *, uid: int, sudo: bool, apt_ok: bool, require: bool = False
) -> tuple[subprocess.CompletedProcess, Path]:
    """The script with a fake machine: `uid` from id, password-less sudo or not, apt-get that installs or fails."""
    project = tmp / "project"
    (project / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "scripts" / "ensure-chromium.sh", project / "scripts")
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    chromium = tmp / "usr-bin-chromium"
    calls = tmp / "calls.log"
    _stub(bin_dir, "id", f"echo {uid}\n")
    _stub(
        bin_dir,
        "sudo",
        f'echo "sudo $*" >> {calls}\n' + ('[[ "$2" == true ]] && exit 0\nshift\nexec "$@"\n' if sudo else "exit 1\n"),
    )
    install = f"touch {chromium} && chmod +x {chromium}" if apt_ok else "exit 100"
    _stub(bin_dir, "apt-get", f'echo "apt-get $*" >> {calls}\n[[ "$1" == update ]] && exit 0\n{install}\n')
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CRUX_CHROMIUM": str(chromium),
        **({"CRUX_REQUIRE_CHROMIUM": "1"} if require else {}),
    }
    result = subprocess.run(
        ["bash", str(project / "scripts" / "ensure-chromium.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    return result, project


def _calls(tmp: Path) -> str:
    return (tmp / "calls.log").read_text() if (tmp / "calls.log").exists() else ""


def test_root_installs_debians_chromium_without_recommends(tmp_path: Path) -> None:
    result, project = _run(tmp_path, uid=0, sudo=False, apt_ok=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "usr-bin-chromium").exists()
    assert "apt-get update" in _calls(tmp_path)
    assert "apt-get install -y -q --no-install-recommends chromium" in _calls(tmp_path)
    assert not (project / ".crux" / "chromium-missing").exists()
    # Installed: a second run does nothing.
    (tmp_path / "calls.log").unlink()
    assert _run(tmp_path, uid=0, sudo=False, apt_ok=True)[0].returncode == 0 and _calls(tmp_path) == ""


def test_a_user_with_password_less_sudo_installs_through_sudo(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, uid=1000, sudo=True, apt_ok=True)
    assert result.returncode == 0, result.stderr
    assert (
        "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install" in _calls(tmp_path)
        and (tmp_path / "usr-bin-chromium").exists()
    )


@pytest.mark.parametrize(
    ("uid", "sudo", "apt_ok", "why"),
    [
        (1000, False, True, "not root and no password-less sudo"),
        (0, False, False, "apt-get install chromium failed"),
    ],
)
def test_when_it_cannot_install_it_says_why_and_goes_on(
    tmp_path: Path, uid: int, sudo: bool, apt_ok: bool, why: str
) -> None:
    result, project = _run(tmp_path, uid=uid, sudo=sudo, apt_ok=apt_ok)
    assert result.returncode == 0  # the rest of the set-up (and `make demo`) must still work
    assert why in result.stderr and "browser tests will be skipped" in result.stderr
    assert why in (project / ".crux" / "chromium-missing").read_text()
    # CI asks for the browser: there the same situation stops the set-up.
    required, _ = _run(tmp_path, uid=uid, sudo=sudo, apt_ok=apt_ok, require=True)
    assert required.returncode == 1 and why in required.stderr


def test_browser_tests_skip_with_the_reason_the_set_up_left(tmp_path: Path) -> None:
    import console_support

    present = tmp_path / "chromium"
    present.touch()
    assert console_support.chromium_missing(present) is None
    reason = console_support.chromium_missing(tmp_path / "absent")
    assert reason is not None and str(tmp_path / "absent") in reason
    if (REPO / ".crux" / "chromium-missing").is_file():
        assert (REPO / ".crux" / "chromium-missing").read_text().strip() in reason
    else:
        assert "scripts/setup.sh" in reason
