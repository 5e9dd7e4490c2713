"""A PEP 517 build backend for the moe_router package that needs nothing
from a package index: the project's CMake builds the package (the gRPC
stubs and the native engine, target moe_python) and this zips it into a
wheel for the running Python. MOE_ROUTER_BUILD_DIR reuses a build tree
(default: a fresh one in a temporary directory)."""

import base64
import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import zipfile

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPOSITORY = os.path.dirname(PYTHON_DIR)


def _project():
    with open(os.path.join(PYTHON_DIR, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _metadata(project):
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}",
             f"Version: {project['version']}", f"Summary: {project['description']}",
             f"Requires-Python: {project['requires-python']}"]
    lines += [f"Requires-Dist: {d}" for d in project.get("dependencies", [])]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f"Requires-Dist: {r}; extra == \"{extra}\"" for r in requirements]
    return "\n".join(lines) + "\n"


def _tag():
    interpreter = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{interpreter}-{interpreter}{sys.abiflags}-{platform}"


def _build_package(build_dir):
    subprocess.run(["cmake", "-S", REPOSITORY, "-B", build_dir, "-G", "Ninja",
                    "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}"],
                   check=True, stdout=sys.stderr)
    subprocess.run(["cmake", "--build", build_dir, "--target", "moe_python"], check=True,
                   stdout=sys.stderr)
    return os.path.join(build_dir, "python", "moe_router")


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = _project()
    dist = f"{project['name'].replace('-', '_')}-{project['version']}"
    wheel_name = f"{dist}-{_tag()}.whl"
    with tempfile.TemporaryDirectory() as scratch:
        package = _build_package(os.environ.get("MOE_ROUTER_BUILD_DIR") or scratch)
        files = []
        for root, dirs, names in os.walk(package):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                path = os.path.join(root, name)
                arcname = os.path.join("moe_router", os.path.relpath(path, package))
                with open(path, "rb") as f:
                    files.append((arcname, f.read()))
        files.append((f"{dist}.dist-info/METADATA", _metadata(project).encode()))
        files.append((f"{dist}.dist-info/WHEEL", (
            "Wheel-Version: 1.0\nGenerator: moe_router_build\nRoot-Is-Purelib: false\n"
            f"Tag: {_tag()}\n").encode()))
        record = [_record_line(name, data) for name, data in files]
        record.append(f"{dist}.dist-info/RECORD,,")
        files.append((f"{dist}.dist-info/RECORD", ("\n".join(record) + "\n").encode()))
        with zipfile.ZipFile(os.path.join(wheel_directory, wheel_name), "w",
                             zipfile.ZIP_DEFLATED) as wheel:
            for name, data in files:
                wheel.writestr(name, data)
    return wheel_name
