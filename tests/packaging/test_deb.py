"""The Debian package end to end: build it (or reuse the one `make deb` left
in build/deb), install it into a throwaway root with `dpkg --root` (maintainer
scripts run chrootless on DPKG_ROOT), check what they did, verify the unit,
then start the daemon from its installed path and serve one Generate request
through the client library. Deselect with `-m "not packaging"`."""

from __future__ import annotations

import grp
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from slmd_client import Client

pytestmark = [pytest.mark.packaging, pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
DEB_DIR = REPO / "build" / "deb"
# What the package is built from: a deb older than any of these is rebuilt.
SOURCES = [REPO / "slmd", REPO / "clients" / "python" / "slmd_client", REPO / "packaging",
           REPO / "pyproject.toml", REPO / "clients" / "python" / "pyproject.toml"]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found (a Debian host with dpkg is needed)")
    return path


def _newest_source_mtime() -> float:
    newest = 0.0
    for src in SOURCES:
        files = [src] if src.is_file() else (p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        newest = max([newest, *(p.stat().st_mtime for p in files)])
    return newest


@pytest.fixture(scope="module")
def deb() -> Path:
    if os.environ.get("SLMD_DEB"):
        return Path(os.environ["SLMD_DEB"])
    _need("dpkg-deb")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the package runs on Debian's /usr/bin/python3, which is missing")
    built = sorted(DEB_DIR.glob("slmd_*.deb"), key=lambda p: p.stat().st_mtime)
    if built and built[-1].stat().st_mtime > _newest_source_mtime():
        return built[-1]
    proc = subprocess.run([str(REPO / "packaging" / "deb" / "build.sh"), str(DEB_DIR)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sorted(DEB_DIR.glob("slmd_*.deb"), key=lambda p: p.stat().st_mtime)[-1]


def _dpkg(root: Path, *args: str) -> subprocess.CompletedProcess:
    # An empty root has no shell to chroot into, and none of the Depends:
    # the scripts honour DPKG_ROOT instead, and the host provides python3.
    cmd = [_need("dpkg"), f"--root={root}", f"--log={root / 'dpkg.log'}", "--force-script-chrootless",
           "--force-depends", "--force-not-root", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def root(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deb") / "root"
    (root / "var" / "lib" / "dpkg" / "updates").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").touch()
    proc = _dpkg(root, "-i", str(deb))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def _passwd(root: Path, db: str) -> dict[str, list[str]]:
    lines = (root / "etc" / db).read_text().splitlines()
    return {line.split(":")[0]: line.split(":") for line in lines if line}


def test_install_layout_users_and_dirs(root):
    for path in ["usr/lib/systemd/system/slmd.service", "usr/lib/sysusers.d/slmd.conf",
                 "usr/lib/tmpfiles.d/slmd.conf", "etc/slmd/slmd.toml", "usr/share/doc/slmd/INTEGRATORS.md"]:
        assert (root / path).is_file(), path
    # /usr/bin/slmd is a relative link into the environment, so it resolves inside the root.
    launcher = (root / "usr" / "bin" / "slmd").resolve()
    assert launcher == root / "opt" / "slmd" / "bin" / "slmd"
    assert os.access(launcher, os.X_OK)

    users, groups = _passwd(root, "passwd"), _passwd(root, "group")
    assert "slmd" in users and users["slmd"][5] == "/var/lib/slmd"
    assert "slmd-clients" in groups and "slmd" in groups
    state = (root / "var" / "lib" / "slmd").stat()
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (int(users["slmd"][2]), 0o750)

    conffiles = subprocess.run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W", "-f=${Conffiles}", "slmd"],
                               capture_output=True, text=True, check=True).stdout
    assert "/etc/slmd/slmd.toml" in conffiles
    if shutil.which("systemctl"):  # postinst applied the preset: enabled
        assert (root / "etc/systemd/system/multi-user.target.wants/slmd.service").is_symlink()


def test_installed_config_is_valid(root):
    out = subprocess.run([str(root / "usr/bin/slmd"), "config", "--config", str(root / "etc/slmd/slmd.toml")],
                         capture_output=True, text=True, env=_clean_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"socket_path": "/run/slmd/slmd.sock"' in out.stdout
    assert '"socket_group": "slmd-clients"' in out.stdout
    assert '"data_dir": "/var/lib/slmd"' in out.stdout


def test_unit_verifies_and_scores_ok(root, tmp_path):
    analyze = _need("systemd-analyze")
    # verify checks that ExecStart= exists: point it at the throwaway root.
    unit = tmp_path / "slmd.service"
    unit.write_text((root / "usr/lib/systemd/system/slmd.service").read_text()
                    .replace("ExecStart=/usr/bin/slmd", f"ExecStart={root}/usr/bin/slmd"))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    if "offline" in proc.stderr and proc.returncode != 0:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    m = re.search(r"Overall exposure level for slmd.service: ([\d.]+) (\w+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    # systemd calls exposure below 5.0 "OK" (below 1.0 "SAFE").
    assert float(m.group(1)) < 5.0 and m.group(2) in ("OK", "SAFE", "PERFECT"), m.group(0)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLMD_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin"  # nothing from the development venv
    return env


def test_installed_daemon_serves_one_request(root, default_model, tmp_path):
    sock = tmp_path / "slmd.sock"
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / default_model.name).symlink_to(default_model)
    group = grp.getgrgid(os.getegid()).gr_name
    log = tmp_path / "slmd.log"
    cmd = [str(root / "usr/bin/slmd"), "serve", "--socket", str(sock), "--data-dir", str(data),
           "--socket-group", group, "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=_clean_env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while not sock.exists():
            assert proc.poll() is None, f"slmd exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no socket after 90 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        # It runs the packaged environment: the installed interpreter and llama.cpp.
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert str(root / "opt/slmd/lib") in maps and "libllama" in maps
        mode = sock.stat()
        assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_gid == os.getegid()

        with Client(str(sock), wait_for_ready=True, timeout=60) as client:
            reply = client.complete("The capital of France is", max_tokens=8, temperature=0.0)
        assert reply.text.strip() and reply.usage is not None and reply.usage.completion_tokens > 0

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_purge_removes_everything(root):
    proc = _dpkg(root, "--purge", "slmd")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in ["opt/slmd", "var/lib/slmd", "etc/slmd", "usr/bin/slmd", "usr/lib/systemd/system/slmd.service"]:
        assert not (root / path).exists(), path
