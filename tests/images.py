"""Test images for the Docker integration tests.

No container registry is reachable on the CI machines, so the test image is built
locally ``FROM scratch`` around a statically linked busybox binary (Debian's
``busybox-static``). Where no static busybox exists, ``busybox:latest`` is pulled
from a registry and tagged instead.

Use it from tests (``tests`` is on ``pythonpath``)::

    from images import TEST_IMAGE, ensure_test_images

or from a shell, before the test run::

    python3 tests/images.py
"""

from __future__ import annotations

import io
import struct
import sys
import tarfile
import threading
from pathlib import Path

import docker
import docker.errors

TEST_IMAGE = "dockyard-test-busybox:latest"
"""Tiny image with ``/bin/sh`` and the busybox applets; starts in about 0.25 s."""

BUSYBOX_CANDIDATES: tuple[str, ...] = ("/bin/busybox", "/usr/bin/busybox")

DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["/bin/sh"]
"""

_PT_INTERP = 3
_ET_EXEC = 2
_ET_DYN = 3

_lock = threading.Lock()


def is_static_elf(path: Path) -> bool:
    """True when ``path`` is an ELF executable without a ``PT_INTERP`` program header.

    A binary without an interpreter runs without a dynamic loader, so it works in a
    ``FROM scratch`` image.
    """
    try:
        with path.open("rb") as f:
            ident = f.read(16)
            if len(ident) < 16 or ident[:4] != b"\x7fELF":
                return False
            ei_class, ei_data = ident[4], ident[5]
            if ei_data == 1:
                endian = "<"
            elif ei_data == 2:
                endian = ">"
            else:
                return False
            if ei_class == 2:  # ELFCLASS64
                fmt = endian + "HHIQQQIHHH"
            elif ei_class == 1:  # ELFCLASS32
                fmt = endian + "HHIIIIIHHH"
            else:
                return False
            raw = f.read(struct.calcsize(fmt))
            if len(raw) < struct.calcsize(fmt):
                return False
            fields = struct.unpack(fmt, raw)
            e_type, e_phoff, e_phentsize, e_phnum = fields[0], fields[4], fields[8], fields[9]
            if e_type not in (_ET_EXEC, _ET_DYN) or e_phnum == 0 or e_phentsize < 4:
                return False
            for index in range(e_phnum):
                f.seek(e_phoff + index * e_phentsize)
                p_type_raw = f.read(4)
                if len(p_type_raw) < 4:
                    return False
                if struct.unpack(endian + "I", p_type_raw)[0] == _PT_INTERP:
                    return False
            return True
    except OSError:
        return False


def find_static_busybox() -> Path | None:
    """The first statically linked busybox among :data:`BUSYBOX_CANDIDATES`, if any."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and is_static_elf(path.resolve()):
            return path.resolve()
    return None


def build_context(busybox: Path) -> io.BytesIO:
    """An in-memory tar build context holding the Dockerfile and the busybox binary."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        dockerfile = DOCKERFILE.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(dockerfile))
        binary = busybox.read_bytes()
        info = tarfile.TarInfo("busybox")
        info.size = len(binary)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(binary))
    buffer.seek(0)
    return buffer


def _image_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def _ensure_test_image(client: docker.DockerClient) -> str:
    """Make sure :data:`TEST_IMAGE` exists; returns a description of what was done."""
    with _lock:
        if _image_exists(client, TEST_IMAGE):
            return f"{TEST_IMAGE}: already present"
        busybox = find_static_busybox()
        if busybox is not None:
            client.images.build(
                fileobj=build_context(busybox),
                custom_context=True,
                tag=TEST_IMAGE,
                rm=True,
                forcerm=True,
            )
            return f"{TEST_IMAGE}: built from scratch with static {busybox}"
        image = client.images.pull("busybox", "latest")
        repository, _, tag = TEST_IMAGE.rpartition(":")
        image.tag(repository, tag)
        return f"{TEST_IMAGE}: no static busybox found, pulled busybox:latest and tagged it"


def ensure_test_images(client: docker.DockerClient) -> None:
    """Build (or, lacking a static busybox, pull) every test image that is missing."""
    _ensure_test_image(client)


def main() -> int:
    client = docker.from_env()
    try:
        print(_ensure_test_image(client))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
