"""infra/systemd: the units' hardening, checked three ways.

- Always: the option list of every unit, read here, against what callrec needs (the commands parse,
  the stop timeout covers ``[ingest] shutdown_grace``, the memory limit fits the ffmpeg caps).
- Where systemd is installed (installed here with apt-get when missing and we are root):
  ``systemd-analyze verify`` against a stub root holding the units and the executables they name, with
  any warning a failure, and ``systemd-analyze security --offline`` under a threshold.
- Where the kernel has ``PR_SET_MDWE`` (Linux 6.3+): callrec's audio, crypto and password work, ffmpeg
  included, under the kernel's deny-write-execute control, the one ``MemoryDenyWriteExecute`` asks
  systemd to enforce.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from callrec.audio import FFMPEG_ADDRESS_SPACE
from callrec.cli import build_parser
from callrec.config import IngestConfig

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "infra" / "systemd"
SERVICES = ("callrec-web.service", "callrec-worker.service", "callrec-sweep.service")
AUDIO = ROOT.parent / "shared" / "fixtures" / "audio"
# Highest `systemd-analyze security` exposure accepted (0 is best, 10 worst; under 2 is "OK").
EXPOSURE_THRESHOLD = 2

# Options every callrec service unit sets, with their values.
HARDENING = {
    "User": "callrec",
    "Group": "callrec",
    "UMask": "0077",
    "NoNewPrivileges": "true",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/callrec",
    "StateDirectory": "callrec",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "PrivateDevices": "true",
    "PrivateMounts": "true",
    "ProtectProc": "invisible",
    "ProtectKernelTunables": "true",
    "ProtectKernelModules": "true",
    "ProtectKernelLogs": "true",
    "ProtectControlGroups": "true",
    "ProtectClock": "true",
    "ProtectHostname": "true",
    "LockPersonality": "true",
    "RestrictRealtime": "true",
    "RestrictNamespaces": "true",
    "RestrictSUIDSGID": "true",
    "RemoveIPC": "true",
    "MemoryDenyWriteExecute": "true",
    "KillSignal": "SIGTERM",
    "KillMode": "mixed",
    "LimitCORE": "0",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with every value it is given (systemd allows repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        assert "=" in line and not line.endswith("\\"), f"{path.name}: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(name: str) -> dict[str, list[str]]:
    return parse_unit(UNITS / name)["Service"]


def one(options: dict[str, list[str]], key: str) -> str:
    (value,) = options[key]
    return value


def size(value: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    match = re.fullmatch(r"(\d+)([KMG]?)", value)
    assert match, value
    return int(match[1]) * units.get(match[2], 1)


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_is_hardened(name: str) -> None:
    options = service(name)
    missing = {k: v for k, v in HARDENING.items() if options.get(k) != [v]}
    assert missing == {}, f"{name}: options missing or different: {missing}"
    # The network-service set of system calls, less the privileged ones, and never less @resources:
    # its setrlimit puts ffmpeg under its caps (callrec/audio.py).
    assert options["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert "CALLREC_DATA_DIR=/var/lib/callrec" in options["Environment"]


@pytest.mark.parametrize("name", SERVICES)
def test_each_unit_runs_a_callrec_command(name: str) -> None:
    command = one(service(name), "ExecStart").split()
    assert command[0] == "/opt/callrec/.venv/bin/callrec"
    args = build_parser().parse_args(command[1:])
    expected = {
        "callrec-web.service": "serve",
        "callrec-worker.service": "worker",
        "callrec-sweep.service": "sweep",
    }
    assert args.command == expected[name]
    if name == "callrec-web.service":
        assert args.no_workers is True


@pytest.mark.parametrize("name", SERVICES)
def test_the_stop_timeout_covers_the_shutdown_grace(name: str) -> None:
    grace = IngestConfig().shutdown_grace.total_seconds()
    timeout = int(one(service(name), "TimeoutStopSec").removesuffix("s"))
    assert timeout >= grace + 5


@pytest.mark.parametrize("name", SERVICES)
def test_memory_limits(name: str) -> None:
    options = service(name)
    high, top = size(one(options, "MemoryHigh")), size(one(options, "MemoryMax"))
    assert 0 < high < top
    if name == "callrec-worker.service":
        # Every concurrent job may run one ffmpeg with its full address space, and Python beside them.
        assert top >= IngestConfig().workers * FFMPEG_ADDRESS_SPACE + (512 << 20)
    if name == "callrec-web.service":
        assert top >= FFMPEG_ADDRESS_SPACE + (256 << 20)


def test_the_timer_starts_the_sweep() -> None:
    timer = parse_unit(UNITS / "callrec-sweep.timer")
    assert "OnUnitActiveSec" in timer["Timer"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    assert one(service("callrec-sweep.service"), "Type") == "oneshot"


# --- systemd-analyze ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"],
            check=True,
            timeout=600,
            env=env,
        )
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd is not installed and cannot be: only the option list was checked")
    return found


@pytest.fixture
def stub_root(tmp_path: Path) -> Iterator[Path]:
    """A root with the units, the executables they name (stubs) and systemd's own units (targets)."""
    root = tmp_path / "root"
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    for unit in UNITS.glob("callrec-*"):
        shutil.copy(unit, system)
    for name in SERVICES:
        exe = root / one(service(name), "ExecStart").split()[0].lstrip("/")
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    for directory in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(directory).is_dir():
            shutil.copytree(directory, root / directory.lstrip("/"), symlinks=True, dirs_exist_ok=True)
            break
    yield root


def analyze(exe: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_systemd_analyze_verify_finds_nothing(systemd_analyze: str, stub_root: Path) -> None:
    units = [*SERVICES, "callrec-sweep.timer"]
    done = analyze(systemd_analyze, "verify", f"--root={stub_root}", *units)
    # verify exits 0 on unknown keys and bad values too: any output at all is a finding.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_analyze_verify_sees_mistakes(systemd_analyze: str, stub_root: Path) -> None:
    """The check above is not blind: a misspelt option, a bad value and a missing binary show."""
    unit = stub_root / "etc" / "systemd" / "system" / "callrec-web.service"
    text = unit.read_text().replace("ProtectClock=true", "ProtectClok=true")
    unit.write_text(text.replace("LockPersonality=true", "LockPersonality=maybe"))
    (stub_root / "opt" / "callrec" / ".venv" / "bin" / "callrec").unlink()
    done = analyze(systemd_analyze, "verify", f"--root={stub_root}", "callrec-web.service")
    output = done.stdout + done.stderr
    assert "ProtectClok" in output and "maybe" in output and "is not executable" in output


@pytest.mark.parametrize("name", SERVICES)
def test_systemd_rates_the_units_safe(systemd_analyze: str, stub_root: Path, name: str) -> None:
    # --threshold counts in tenths of the level printed (its default, 100, is level 10).
    threshold = f"--threshold={EXPOSURE_THRESHOLD * 10}"
    done = analyze(systemd_analyze, "security", "--offline=true", f"--root={stub_root}", threshold, name)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert level, done.stdout + done.stderr
    print(f"{name}: exposure {level[1]}")
    assert float(level[1]) <= EXPOSURE_THRESHOLD, done.stdout[-3000:]
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_syscall_filter_keeps_what_the_ffmpeg_caps_need(systemd_analyze: str) -> None:
    def calls(group: str) -> set[str]:
        out = analyze(systemd_analyze, "syscall-filter", group).stdout
        names = {w for w in out.split() if not w.startswith(("#", "@"))}
        for nested in re.findall(r"^\s+(@[\w-]+)$", out, re.MULTILINE):
            names |= calls(nested)
        return names

    allowed = calls("@system-service") - calls("@privileged")
    # Python's resource.setrlimit uses prlimit64 or setrlimit, depending on the C library.
    assert {"setrlimit", "prlimit64", "execve", "clone", "wait4", "pipe2"} <= allowed


# --- MemoryDenyWriteExecute ---------------------------------------------------------------------

PR_SET_MDWE = 65
PR_GET_MDWE = 66


def kernel_has_mdwe() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0)
    except (AttributeError, OSError):  # no prctl: not Linux
        return False


WORKLOAD = textwrap.dedent(
    """
    import ctypes, io, mmap, sys
    from pathlib import Path

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        sys.exit(f"PR_SET_MDWE failed: errno {ctypes.get_errno()}")
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        print("write+execute mapping refused")
    else:
        sys.exit("a write+execute mapping was allowed: the control is not in force")

    import argon2
    import callrec.app  # every module the service loads
    from callrec import audio
    from callrec.consent.announcement import Prompt, verify_announcement
    from callrec.consent.redaction import Span, redact_file
    from callrec.crypto import envelope
    from callrec.crypto.keys import LocalKeyProvider

    fixtures, work = Path(sys.argv[1]), Path(sys.argv[2])
    assert audio.configure_ffmpeg()
    call = fixtures / "call-stereo-agent-left-caller-right.wav"
    info = audio.probe_file(call)
    redacted = work / "redacted.flac"
    redact_file(call, redacted, [Span(0, 500)], info=info, max_duration_ms=600_000, max_bytes=64 << 20)
    assert audio.probe_file(redacted).codec == "flac"
    prompt = Prompt.from_file(fixtures / "announcement-en-gb-v1.wav")
    assert verify_announcement(fixtures / "call-with-announcement.wav", prompt).verified

    keys = LocalKeyProvider(work / "keyring.json")
    keys.ensure_tenant("acme")
    kek = keys.kek("acme")
    handle = envelope.new_recording_key()
    wrapped = envelope.wrap_key(handle, kek, tenant="acme", recording_id="r1")
    sealed = io.BytesIO()
    plain = redacted.read_bytes()
    envelope.encrypt_stream(io.BytesIO(plain), sealed, handle, tenant="acme", recording_id="r1")
    sealed.seek(0)
    again = envelope.unwrap_key(wrapped, kek, tenant="acme", recording_id="r1")
    assert envelope.decrypt_stream(sealed, again, tenant="acme", recording_id="r1").read() == plain

    hasher = argon2.PasswordHasher()
    assert hasher.verify(hasher.hash("correct horse"), "correct horse")

    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    numbers = (ctypes.c_int * 4)(3, 1, 4, 2)
    libc.qsort(numbers, 4, ctypes.sizeof(ctypes.c_int), compare(lambda a, b: a[0] - b[0]))
    assert list(numbers) == [1, 2, 3, 4]
    print("all done under MDWE")
    """
)


@pytest.mark.skipif(
    sys.platform != "linux" or not kernel_has_mdwe(), reason="kernel without PR_SET_MDWE (6.3+)"
)
def test_callrec_and_ffmpeg_run_with_write_execute_memory_denied(tmp_path: Path) -> None:
    """``MemoryDenyWriteExecute=true`` is safe for callrec: with the kernel refusing any writable and
    executable memory to this process and its children (ffmpeg inherits the control across exec), the
    redaction, the announcement check, envelope encryption, the keyring, argon2 and a ctypes callback
    all work."""
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(script), str(AUDIO), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.splitlines() == ["write+execute mapping refused", "all done under MDWE"]
