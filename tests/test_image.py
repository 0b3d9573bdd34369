"""The container image, checked without a Docker daemon: the Dockerfile through Docker's own
parser (the `dockerfile` package), the build context through .dockerignore's matching rules,
the lock file against pyproject.toml, and the offline data check run here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import dockerfile
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"

COMPILERS = frozenset(
    {"gcc", "g++", "cc", "c++", "clang", "cpp", "build-essential", "make", "cmake", "gfortran"}
)
# What a COPY --from of a builder's toolchain would look like.
TOOLCHAIN_PATHS = ("/usr/bin", "/usr/lib/gcc", "/usr/libexec/gcc", "/usr/include", "/usr/lib")


@dataclass(frozen=True)
class Stage:
    name: str  # the AS name, or the stage's index
    image: str
    commands: tuple[dockerfile.Command, ...]

    def of(self, kind: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == kind]


@cache
def stages() -> tuple[Stage, ...]:
    found: list[Stage] = []
    current: list[dockerfile.Command] = []
    header: dockerfile.Command | None = None
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "FROM":
            if header is not None:
                found.append(_stage(header, current, len(found)))
            header, current = command, []
        elif header is not None:
            current.append(command)
    assert header is not None, "the Dockerfile has no FROM"
    found.append(_stage(header, current, len(found)))
    return tuple(found)


def _stage(header: dockerfile.Command, commands: list[dockerfile.Command], index: int) -> Stage:
    value = header.value
    name = value[2] if len(value) >= 3 and value[1].upper() == "AS" else str(index)
    return Stage(name=name, image=value[0], commands=tuple(commands))


def final() -> Stage:
    return stages()[-1]


def flag(command: dockerfile.Command, name: str) -> str | None:
    for item in command.flags:
        key, _, value = item.partition("=")
        if key == f"--{name}":
            return value
    return None


def shell(command: dockerfile.Command) -> str:
    return " ".join(command.value)


def apt_packages(script: str) -> list[str]:
    """The packages of every `apt-get install` / `apt install` in a shell script."""
    packages = []
    for part in re.split(r"&&|;|\|\|", script):
        words = part.split()
        for tool in ("apt-get", "apt"):
            if tool in words and "install" in words[words.index(tool) :]:
                after = words[words.index("install", words.index(tool)) + 1 :]
                packages += [w for w in after if not w.startswith("-")]
    return packages


# -- stages, base images, compilers -----------------------------------------------------------


def test_the_image_is_built_in_stages_and_the_final_one_takes_the_builders_work() -> None:
    built = stages()
    assert len(built) >= 2, "one stage: the compilers and build caches would ship"
    earlier = {stage.name for stage in built[:-1]}
    copied_from = {flag(c, "from") for c in final().of("COPY")}
    assert copied_from & earlier, f"the final stage copies nothing from {earlier}"


def test_base_images_are_pinned_by_tag_or_digest() -> None:
    names = {stage.name for stage in stages()}
    for stage in stages():
        image = stage.image
        if image in names:
            continue  # FROM an earlier stage
        assert "$" not in image, f"{image}: a base chosen by a build argument is not pinned"
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository, f"{image} has no tag: it means latest"
        assert "/" not in tag, f"{image} has no tag: it means latest"
        assert tag != "latest", f"{image} floats with every release"
        assert re.search(r"\d", tag), f"{image}: the tag names no version"


def test_the_final_stage_installs_no_compiler_and_copies_none_over() -> None:
    runtime = final()
    for command in runtime.of("RUN"):
        script = shell(command)
        for package in apt_packages(script):
            assert package not in COMPILERS, f"the final stage installs {package}"
            assert not package.endswith("-dev"), f"the final stage installs {package}"
            assert not re.match(r"(gcc|g\+\+|clang|cpp)-\d", package), package
        if apt_packages(script):
            # Recommends are how a compiler arrives unasked (python3-dev, dpkg-dev ...).
            assert "--no-install-recommends" in script, script
    for command in runtime.of("COPY"):
        if flag(command, "from") is None:
            continue
        for source in command.value[:-1]:
            path = "/" + source.strip("/")
            assert path not in ("/", "/usr", "/usr/local"), f"copies {source} whole"
            assert not path.startswith(TOOLCHAIN_PATHS), f"copies the toolchain: {source}"


def test_the_final_stage_leaves_no_apt_lists_behind() -> None:
    installs = [c for c in final().of("RUN") if apt_packages(shell(c))]
    assert installs, "the final stage installs no Debian package (espeak-ng speaks Korean)"
    for command in installs:
        assert "rm -rf /var/lib/apt/lists" in shell(command), shell(command)


def test_espeak_ng_is_installed_where_the_services_run() -> None:
    packages = [p for c in final().of("RUN") for p in apt_packages(shell(c))]
    assert "espeak-ng" in packages, "Korean speech needs espeak-ng in the final stage"


# -- dependencies -----------------------------------------------------------------------------


def test_pip_installs_only_the_hashed_lock_without_resolving() -> None:
    installs = [c for stage in stages() for c in stage.of("RUN") if "pip install" in shell(c)]
    assert installs, "no stage installs the dependencies"
    scripts = [" ".join(shell(c).split()) for c in installs]
    commands = [part for script in scripts for part in script.split("&&") if "pip install" in part]
    for command in commands:
        assert "--require-hashes" in command, command
        assert "--no-deps" in command, command
        assert re.search(r"-r\s+\S+\.lock\b", command), f"installs what no lock names: {command}"
        # An isolated build would fetch its setuptools from the index with no hash checked.
        assert "--no-build-isolation" in command or "--only-binary=:all:" in command, command
    assert any(re.search(r"-r\s+\S*/requirements\.lock\b", c) for c in commands), commands
    copied = [s for stage in stages() for c in stage.of("COPY") for s in c.value[:-1]]
    assert "requirements.lock" in copied, "the lock never reaches the build"


def test_the_build_backend_the_builder_installs_first_is_the_locked_one() -> None:
    # The sdists build against this setuptools: the awk program that cuts it out of the lock
    # must give exactly its entry, hashes included.
    scripts = [shell(c) for stage in stages() for c in stage.of("RUN") if "awk " in shell(c)]
    assert scripts, "the builder does not install the lock's setuptools first"
    program = re.search(r"awk '([^']+)'", scripts[0])
    assert program is not None, scripts[0]
    awk = shutil.which("awk")
    assert awk is not None, "no awk here (Debian has it in every image)"
    done = subprocess.run(
        [awk, program.group(1), str(LOCK)], capture_output=True, text=True, check=True
    )
    entry = locked()["setuptools"]
    lines = [line for line in done.stdout.splitlines() if not line.lstrip().startswith("#")]
    assert lines[0].split()[0] == str(entry.requirement), done.stdout
    assert [line.split("=", 1)[1].rstrip(" \\") for line in lines[1:]] == list(entry.hashes)


def test_the_generated_code_is_made_with_the_makefiles_descriptor_flags() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    wanted = re.search(r"--include_source_info --descriptor_set_out=\S+", makefile)
    assert wanted is not None, "the Makefile's proto recipe changed shape"
    protoc = [c for c in stages()[0].of("RUN") if "grpc_tools.protoc" in shell(c)]
    assert protoc, "the builder does not generate chatagent/v1"
    script = " ".join(shell(protoc[0]).split())
    # The tool descriptions the LLM reads come from the descriptors' source info.
    assert wanted.group() in script, script
    assert "--mypy" not in script, "mypy-protobuf is a dev dependency, not in the lock"
    copied = {c.value[0] for c in final().of("COPY") if flag(c, "from")}
    assert "/app/chatagent" in copied, "the generated code does not reach the final stage"


@dataclass(frozen=True)
class Locked:
    requirement: Requirement
    hashes: tuple[str, ...]


def locked() -> dict[str, Locked]:
    entries: dict[str, Locked] = {}
    logical: list[str] = []
    for raw in LOCK.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        logical.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            text = " ".join(logical)
            logical = []
            spec, *options = text.split(" --")
            requirement = Requirement(spec)
            hashes = tuple(o.split("=", 1)[1] for o in options if o.startswith("hash="))
            entries[canonicalize_name(requirement.name)] = Locked(requirement, hashes)
    return entries


def pyproject() -> Any:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)["project"]


def test_the_lock_pins_every_runtime_dependency_at_pyprojects_version() -> None:
    lock = locked()
    for line in pyproject()["dependencies"]:
        wanted = Requirement(line)
        entry = lock.get(canonicalize_name(wanted.name))
        assert entry is not None, f"{wanted.name} is missing from requirements.lock"
        pinned = [s for s in entry.requirement.specifier if s.operator == "=="]
        assert pinned, f"{entry.requirement} is not pinned"
        assert wanted.specifier.contains(pinned[0].version, prereleases=True), (
            f"requirements.lock has {entry.requirement}, pyproject.toml wants {wanted} "
            "(run make lock)"
        )


def test_every_locked_package_is_exact_and_hashed() -> None:
    lock = locked()
    assert len(lock) > len(pyproject()["dependencies"]), "the lock lacks the transitive set"
    for name, entry in lock.items():
        specifiers = list(entry.requirement.specifier)
        assert [s.operator for s in specifiers] == ["=="], entry.requirement
        assert entry.hashes, f"{name} has no hash: pip --require-hashes refuses the lock"
        for digest in entry.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{name}: {digest}"


def test_the_lock_holds_no_development_tools() -> None:
    dev = pyproject()["optional-dependencies"]["dev"]
    shipped = set(locked()) & {canonicalize_name(Requirement(d).name) for d in dev}
    assert not shipped, f"dev tools would ship in the image: {sorted(shipped)}"


# -- user, entry point, services --------------------------------------------------------------


def test_the_services_run_as_a_numeric_non_root_user() -> None:
    commands = final().commands
    users = [i for i, c in enumerate(commands) if c.cmd == "USER"]
    assert users, "no USER: the services would run as root"
    last = commands[users[-1]]
    uid, _, gid = last.value[0].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit(), f"USER {last.value[0]}: not numeric"
    assert int(uid) != 0, f"USER {last.value[0]} is root"
    assert gid == "" or (gid.isdigit() and int(gid) != 0), f"USER {last.value[0]}"
    starts = [i for i, c in enumerate(commands) if c.cmd in ("ENTRYPOINT", "CMD")]
    assert starts, "no start command"
    assert users[-1] < min(starts), "USER comes after the start command"


def test_the_start_command_is_exec_form_and_names_a_service() -> None:
    entrypoint = final().of("ENTRYPOINT")
    cmd = final().of("CMD")
    assert entrypoint, "the image needs an ENTRYPOINT"
    assert cmd, "the image needs a CMD (the default service)"
    for command in (*entrypoint, *cmd):
        # Shell form runs under /bin/sh -c: SIGTERM would stop the shell, not the service.
        assert command.json, f"{command.original} is not in exec (JSON) form"
    # Kubernetes replaces CMD with `args: ["services.tools"]`: the entry point is what stays.
    assert list(entrypoint[-1].value) == ["python", "-m"], entrypoint[-1].original
    argv = [*entrypoint[-1].value, *cmd[-1].value]
    module = argv[argv.index("-m") + 1]
    name = module.removeprefix("services.")
    assert module.startswith("services."), module
    assert (ROOT / "services" / name / "__main__.py").is_file(), f"{module} cannot start"


def discovered_services() -> list[str]:
    return sorted(
        path.parent.name
        for path in (ROOT / "services").glob("*/__main__.py")
        if path.parent.name != "common"
    )


def default_ports(name: str) -> tuple[int, int]:
    import importlib

    from services.common.config import ServiceSettings

    module = importlib.import_module(f"services.{name}.config")
    (settings,) = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
        and value.__module__ == module.__name__
    ]
    fields = settings.model_fields
    return int(fields["port"].default), int(fields["metrics_port"].default)


def test_every_service_can_start_from_the_image_and_its_ports_are_exposed() -> None:
    names = discovered_services()
    assert set(names) >= {"orchestrator", "tools", "tts", "emotion"}, names
    exposed = {int(p.split("/")[0]) for c in final().of("EXPOSE") for p in c.value}
    copied = {c.value[-1].rstrip("/") for c in final().of("COPY")}
    assert "/app/services" in copied, "the services' code is not in the final stage"
    for name in names:
        grpc_port, metrics_port = default_ports(name)
        assert grpc_port in exposed, f"services.{name} listens on {grpc_port}, not EXPOSEd"
        assert metrics_port in exposed, f"services.{name} metrics on {metrics_port}"


def test_the_offline_data_check_runs_last_in_the_final_stage_as_the_user_offline() -> None:
    commands = final().commands
    checks = [
        i
        for i, c in enumerate(commands)
        if c.cmd == "RUN" and "scripts.check_offline_data" in shell(c)
    ]
    assert checks, "the final stage never checks that its data loads offline"
    index = checks[-1]
    check = commands[index]
    users = [i for i, c in enumerate(commands) if c.cmd == "USER"]
    assert users, "no USER"
    assert users[-1] < index, "the check runs as root, not as the services' user"
    copies = [i for i, c in enumerate(commands) if c.cmd == "COPY"]
    assert max(copies, default=index) < index, "something is copied in after the check"
    assert flag(check, "network") == "none", "the check could download what is missing"
    copied = {c.value[-1].rstrip("/") for c in final().of("COPY")}
    assert "/app/scripts" in copied, "scripts/ is not in the final stage"


def test_the_image_sends_caches_to_tmp_not_home() -> None:
    env: dict[str, str] = {}
    for command in final().of("ENV"):
        values = list(command.value)
        env |= dict(zip(values[::2], values[1::2], strict=True))
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"):
        assert env.get(name) == "1", f"{name} is not set"
    # espeak-ng's PulseAudio client and onnxruntime write under these when they are unset.
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        assert env.get(name, "").startswith("/tmp/"), f"{name}={env.get(name)}"
    assert env.get("ORT_DISABLE_TELEMETRY") == "1", "onnxruntime writes its telemetry store"


# -- build context ----------------------------------------------------------------------------


def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (is an exception, compiled pattern), in Docker's own rules: `*` and `?`
    stay within a path segment, `**` spans any number of them, and the last match wins."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        patterns.append((exception, re.compile(_docker_regex(pattern))))
    return patterns


def _docker_regex(pattern: str) -> str:
    out, i = "^", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(char)
        i += 1
    return out + "$"


def excluded(path: str) -> bool:
    """Whether `path` (relative to the context) stays out of the build context."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for exception, pattern in ignore_patterns():
        if any(pattern.match(candidate) for candidate in candidates):
            result = not exception
    return result


def test_the_ignore_rules_are_read_as_docker_reads_them() -> None:
    assert re.match(_docker_regex("**/__pycache__"), "services/tts/__pycache__")
    assert re.match(_docker_regex("**/__pycache__"), "__pycache__")
    assert not re.match(_docker_regex("*"), "services/main.py")
    assert re.match(_docker_regex("*.py[cod]"), "x.pyc")


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "node_modules/.bin/buf",
        "chatagent/v1/chat_pb2.py",
        "chatagent/v1/descriptors.binpb",
        "services/tts/__pycache__/main.cpython-311.pyc",
    ],
)
def test_the_build_context_leaves_out(path: str) -> None:
    assert excluded(path), f"{path} would be sent to the builder"


def context_sources() -> Iterator[str]:
    for stage in stages():
        for command in (*stage.of("COPY"), *stage.of("ADD")):
            if flag(command, "from") is None:
                yield from (source.rstrip("/") for source in command.value[:-1])


def test_everything_the_dockerfile_copies_is_in_the_build_context() -> None:
    sources = list(context_sources())
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the repository"
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files = [f for f in files if "__pycache__" not in f.parts and f.suffix != ".pyc"]
        assert files, f"COPY {source} copies nothing"
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not excluded(relative), f"{relative} is copied but .dockerignore drops it"


# -- the offline check itself -----------------------------------------------------------------


def run_check(*names: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.check_offline_data", *names],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_every_data_file_the_services_need_loads_offline_here() -> None:
    done = run_check()
    assert done.returncode == 0, done.stdout + done.stderr
    for part in ("generated code", "gazetteer", "language identifier", "speech", "emotion"):
        assert f"ok   {part}:" in done.stdout, done.stdout


def test_the_check_names_what_is_missing(tmp_path: Path) -> None:
    # The generated code without descriptors.binpb, as a wheel of the project would ship it.
    package = tmp_path / "chatagent" / "v1"
    package.mkdir(parents=True)
    (tmp_path / "chatagent" / "__init__.py").write_text("")
    for source in (ROOT / "chatagent" / "v1").glob("*.py"):
        (package / source.name).write_bytes(source.read_bytes())
    done = run_check("generated code", cwd=tmp_path, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL generated code" in done.stdout, done.stdout
    assert "descriptors.binpb" in done.stdout, done.stdout


def test_the_check_turns_the_network_off_but_not_loopback() -> None:
    probe = """
import socket, sys
import scripts.check_offline_data as check
check.guard()
server = socket.create_server(("127.0.0.1", 0))
socket.create_connection(server.getsockname(), timeout=2).close()
# Only a package registry is named: were the guard broken, nothing forbidden would be reached.
attempts = [
    lambda: socket.create_connection(("pypi.org", 443), timeout=2),  # looked up first
    lambda: socket.socket().connect(("pypi.org", 443)),  # connected to by name
]
for attempt in attempts:
    try:
        attempt()
    except check.NetworkDisabled:
        continue
    sys.exit("the network was reachable")
print(check.network_attempts)
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "getaddrinfo" in done.stdout, done.stdout
    assert "socket.connect" in done.stdout, done.stdout
