"""The container images: Containerfile invariants, content keys, version drift, and a real build.

The pure tests read images/*/Containerfile and e2e/images.py's key functions.
The test marked `images` builds the control image with buildah (from the
mmdebstrap base, as `make images` does) and runs its entry point.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from loraplex.api.engine_version import VLLM_VERSION
from loraplex.api.release import __version__
from loraplex.e2e import images
from loraplex.e2e.images import IMAGES, ImageSpec

ROOT = images.ROOT
BY_NAME = {spec.name: spec for spec in IMAGES}
WORKLOADS = ("control", "trainer", "vllm-cpu", "pause")  # images that run; torch is only a base
OCI_LABELS = ("title", "description", "source", "licenses", "version", "revision")


def containerfile(name: str) -> str:
    return (ROOT / BY_NAME[name].containerfile).read_text()


def final_stage(text: str) -> list[str]:
    """The instructions from the last FROM on."""
    steps = images.instructions(text)
    last = max(i for i, step in enumerate(steps) if step.upper().startswith("FROM "))
    return steps[last:]


def stage_value(stage: list[str], keyword: str) -> str | None:
    values = [step.split(" ", 1)[1] for step in stage if step.upper().startswith(keyword + " ")]
    return values[-1] if values else None


def load_install_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "install_vllm_cpu", ROOT / "scripts" / "install_vllm_cpu.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_images_run_as_a_numeric_non_root_user(name: str) -> None:
    user = stage_value(final_stage(containerfile(name)), "USER")
    assert user is not None
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_entrypoints_are_exec_form_without_a_shell(name: str) -> None:
    entrypoint = stage_value(final_stage(containerfile(name)), "ENTRYPOINT")
    assert entrypoint is not None
    argv = json.loads(entrypoint)
    assert isinstance(argv, list)
    assert argv
    assert argv[0] not in ("sh", "/bin/sh", "bash", "/bin/bash")


def test_the_entrypoints_are_the_ones_the_operator_relies_on() -> None:
    assert json.loads(stage_value(final_stage(containerfile("control")), "ENTRYPOINT") or "") == [
        "/opt/loraplex/bin/loraplex"
    ]
    assert json.loads(stage_value(final_stage(containerfile("vllm-cpu")), "ENTRYPOINT") or "") == [
        "python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
    ]
    assert json.loads(stage_value(final_stage(containerfile("pause")), "ENTRYPOINT") or "") == [
        "/catatonit",
        "-P",
    ]


@pytest.mark.parametrize("name", ["control", "torch", "trainer", "vllm-cpu"])
def test_images_carry_the_oci_labels(name: str) -> None:
    labels = " ".join(step for step in final_stage(containerfile(name)) if step.upper().startswith("LABEL "))
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels


@pytest.mark.parametrize("name", ["control", "torch", "pause"])
def test_debian_based_images_default_to_the_registry_base(name: str) -> None:
    text = containerfile(name)
    assert images.declared_args(text)["BASE"] == "docker.io/library/debian:bookworm-slim"
    first_from = next(step for step in images.instructions(text) if step.upper().startswith("FROM "))
    assert first_from.startswith("FROM ${BASE}")


@pytest.mark.parametrize("name", ["trainer", "vllm-cpu"])
def test_torch_images_build_on_the_torch_image_constraints_pin(name: str) -> None:
    assert images.declared_args(containerfile(name))["TORCH_IMAGE"] == images.TORCH_IMAGE
    assert f"ghcr.io/loraplex/torch:{images.TORCH_VERSION}" == images.TORCH_IMAGE
    assert BY_NAME[name].depends_on == ("torch",)


def test_version_defaults_match_the_package_version() -> None:
    for name in ("control", "trainer"):
        assert images.declared_args(containerfile(name))["VERSION"] == __version__
    assert images.declared_args(containerfile("torch"))["VERSION"] == images.TORCH_VERSION


def test_vllm_cpu_version_does_not_drift_from_engine_version() -> None:
    assert images.declared_args(containerfile("vllm-cpu"))["VLLM_VERSION"] == VLLM_VERSION
    assert load_install_script().default_vllm_version() == VLLM_VERSION
    constraints = (ROOT / "constraints.txt").read_text()
    assert images.pinned_version(constraints, "vllm-cpu") == VLLM_VERSION
    assert f"ghcr.io/loraplex/vllm-cpu:v{VLLM_VERSION}" == images.VLLM_CPU_IMAGE


def test_image_refs_are_the_fixed_names_others_depend_on() -> None:
    assert [spec.ref for spec in IMAGES] == [
        "localhost/loraplex/pause:3.10",
        f"ghcr.io/loraplex/loraplex:{__version__}",
        f"ghcr.io/loraplex/torch:{images.TORCH_VERSION}",
        f"ghcr.io/loraplex/loraplex-trainer:{__version__}",
        f"ghcr.io/loraplex/vllm-cpu:v{VLLM_VERSION}",
    ]


def test_copied_sources_are_read_from_copy_lines_but_not_from_other_stages() -> None:
    text = (
        "FROM x AS build\n"
        "COPY a.txt b.txt /src/\n"
        "COPY --chown=1:1 pkg/ \\\n"
        "     /src/pkg\n"
        'COPY ["scripts/run.py", "/opt/"]\n'
        "# COPY commented.txt /nowhere\n"
        "FROM x\n"
        "COPY --from=build /src /src\n"
    )
    assert images.copied_sources(text) == ("a.txt", "b.txt", "pkg", "scripts/run.py")


def test_control_and_trainer_copy_the_project_sources() -> None:
    for name in ("control", "trainer"):
        sources = set(images.copied_sources(containerfile(name)))
        assert {"pyproject.toml", "constraints.txt", "README.md", "loraplex", "operator", "worker"} <= sources
        assert {"router"} <= sources
    assert set(images.copied_sources(containerfile("vllm-cpu"))) == {
        "constraints.txt",
        "scripts/install_vllm_cpu.py",
    }


def copy_control_sources(target: Path) -> ImageSpec:
    """A copy of everything the control image's key reads, under `target`."""
    spec = BY_NAME["control"]
    for relative in [spec.containerfile, *images.copied_sources(containerfile("control"))]:
        source = ROOT / relative
        if source.is_dir():
            shutil.copytree(
                source, target / relative, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)
    return spec


def test_content_key_changes_when_a_copied_source_changes(tmp_path: Path) -> None:
    spec = copy_control_sources(tmp_path)
    before = images.content_key(spec, tmp_path, ["base"])
    assert images.content_key(spec, tmp_path, ["base"]) == before
    s3 = tmp_path / "worker" / "s3.py"
    s3.write_text(s3.read_text() + "\n# changed\n")
    assert images.content_key(spec, tmp_path, ["base"]) != before


def test_content_key_ignores_files_the_image_does_not_copy(tmp_path: Path) -> None:
    spec = copy_control_sources(tmp_path)
    before = images.content_key(spec, tmp_path, ["base"])
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_new.py").write_text("x = 1\n")
    (tmp_path / "worker" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "worker" / "__pycache__" / "s3.cpython-311.pyc").write_bytes(b"\0")
    assert images.content_key(spec, tmp_path, ["base"]) == before


def test_content_key_follows_the_containerfile_build_args_and_upstream(tmp_path: Path) -> None:
    spec = copy_control_sources(tmp_path)
    before = images.content_key(spec, tmp_path, ["base"])
    assert images.content_key(spec, tmp_path, ["another base"]) != before
    other_args = ImageSpec(spec.name, spec.containerfile, spec.ref, build_args=(("VERSION", "9.9.9"),))
    assert images.content_key(other_args, tmp_path, ["base"]) != before
    path = tmp_path / spec.containerfile
    path.write_text(path.read_text() + "\n# a comment\n")
    assert images.content_key(spec, tmp_path, ["base"]) != before


def test_an_image_key_changes_with_the_key_of_the_image_it_is_built_on() -> None:
    first = images.image_keys(IMAGES, ROOT, "base-1")
    second = images.image_keys(IMAGES, ROOT, "base-2")
    assert all(first[name] != second[name] for name in first)


def test_selecting_an_image_brings_what_it_is_built_on_in_build_order() -> None:
    assert [spec.name for spec in images.select(IMAGES, ["vllm-cpu"])] == ["torch", "vllm-cpu"]
    assert [spec.name for spec in images.select(IMAGES, ["control"])] == ["control"]
    assert [spec.name for spec in images.select(IMAGES, None)] == [spec.name for spec in IMAGES]
    with pytest.raises(ValueError, match="unknown images"):
        images.select(IMAGES, ["nope"])


def test_build_command_passes_machine_args_only_where_declared() -> None:
    keys = images.image_keys(IMAGES, ROOT, "base")
    trainer = images.bud_command(BY_NAME["trainer"], ROOT, keys["trainer"], [], "abc")
    assert "BASE=localhost/loraplex/debian:bookworm" not in trainer
    assert f"TORCH_IMAGE={images.TORCH_IMAGE}" in trainer
    control = images.bud_command(BY_NAME["control"], ROOT, keys["control"], ["/c:/root/.cache/pip"], "abc")
    assert "BASE=localhost/loraplex/debian:bookworm" in control
    assert "REVISION=abc" in control
    assert control[-3:] == ["-t", images.CONTROL_IMAGE, str(ROOT)]
    assert control[control.index("--volume") :][:2] == ["--volume", "/c:/root/.cache/pip"]


def test_host_files_are_mounted_only_when_this_machine_has_them(tmp_path: Path) -> None:
    present = tmp_path / "pip.conf"
    present.write_text("[global]\n")
    volumes = images.host_volumes(
        tmp_path / "pip", {str(present): "/etc/pip.conf", str(tmp_path / "absent"): "/etc/x"}
    )
    assert volumes == [f"{tmp_path / 'pip'}:/root/.cache/pip", f"{present}:/etc/pip.conf:ro"]


def test_install_script_keeps_the_torch_family_out_and_drops_the_cpu_label() -> None:
    from email.message import Message

    script = load_install_script()
    metadata = Message()
    for line in (
        "torch==2.13.0+cpu",
        "torchvision==0.28.0+cpu",
        "numpy",
        'xgrammar==0.2; platform_machine == "x86_64"',
        'pytest; extra == "test"',
    ):
        metadata["Requires-Dist"] = line
    assert script.torch_requirement(metadata) == "torch==2.13.0"
    assert script.wheel_requirements(metadata) == ["numpy", "xgrammar==0.2"]


def _can_build() -> str | None:
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install buildah mmdebstrap)"
    if os.geteuid() != 0:
        return "building with buildah --isolation chroot needs root"
    return None


# buildah's own re-exec through a sealed in-memory copy of itself, before the command runs, now and then
# fails to seal it (EBUSY; seen once on a fresh machine): that says nothing of the image, so try again.
BUILDAH_TRANSIENT = "sealing memfd copy"


def buildah_run(image: str, *command: str) -> subprocess.CompletedProcess[str]:
    container = subprocess.run(
        ["buildah", "from", "--pull-never", image], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        for _ in range(3):
            result = subprocess.run(
                ["buildah", "run", "--isolation", "chroot", container, "--", *command],
                check=False,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if BUILDAH_TRANSIENT not in result.stderr:
                break
        return result
    finally:
        subprocess.run(["buildah", "rm", container], check=False, capture_output=True)


@pytest.mark.images
@pytest.mark.timeout(2400)
def test_control_image_builds_and_runs_every_control_entry_point_as_non_root() -> None:
    reason = _can_build()
    if reason:
        pytest.skip(reason)
    archives = images.ensure_images(only=["control"])
    ref = images.CONTROL_IMAGE
    assert archives[ref].is_file()
    inspected = subprocess.run(
        ["buildah", "inspect", "--type", "image", ref], check=True, capture_output=True, text=True
    )
    config = json.loads(inspected.stdout)["OCIv1"]["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/opt/loraplex/bin/loraplex"]
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    for command in ("operator", "router", "agent", "trainer"):
        result = buildah_run(ref, "/opt/loraplex/bin/loraplex", command, "--help")
        assert result.returncode == 0, result.stderr
        assert f"usage: loraplex {command}" in result.stdout
    fetch = buildah_run(ref, "loraplex", "agent", "fetch-model", "--help")
    assert fetch.returncode == 0, fetch.stderr
    modules = "loraplex.operator.main, loraplex.router.main, loraplex.worker.agent.main, minio, aiohttp"
    imported = buildah_run(ref, "python3", "-c", f"import {modules}; import os; print(os.getuid())")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "65532"
    no_torch = buildah_run(ref, "python3", "-c", "import importlib.util as u; print(u.find_spec('torch'))")
    assert no_torch.stdout.strip() == "None"


@pytest.mark.images
@pytest.mark.timeout(2400)
def test_trainer_image_runs_the_trainer_command_without_the_serving_extras() -> None:
    """The trainer image installs `loraplex[worker]` only; its pods run `loraplex trainer`."""
    reason = _can_build()
    if reason:
        pytest.skip(reason)
    ref = images.TRAINER_IMAGE
    assert images.ensure_images(only=["trainer"])[ref].is_file()
    result = buildah_run(ref, "/opt/loraplex/bin/loraplex", "trainer", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: loraplex trainer" in result.stdout
    router = buildah_run(ref, "/opt/loraplex/bin/loraplex", "router", "--base-model", "tiny")
    assert router.returncode == 2
    assert "loraplex[serving]" in router.stderr
