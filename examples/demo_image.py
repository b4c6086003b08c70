"""Build the demo worker image: `FROM scratch` plus a statically linked busybox.

No registry is needed: the image is built locally around the host's static busybox
(Debian: `apt-get install busybox-static`). Where there is none, `busybox:latest` is
pulled and tagged instead.

    python3 examples/demo_image.py [--tag dockyard-demo:latest] [--rebuild]
    python3 examples/demo_image.py --check-busybox   # exit 0 when a static busybox exists
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import docker

DEFAULT_TAG = "dockyard-demo:latest"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/local/bin/busybox")
DOCKERFILE = b"""\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["/bin/sh"]
"""
_PT_INTERP = 3


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without an interpreter (it runs in an empty image)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return False
    endian = "<" if data[5] == 1 else ">"
    if data[4] == 2:  # 64-bit: e_phoff at 32, e_phentsize/e_phnum at 54/56
        (phoff,) = struct.unpack_from(endian + "Q", data, 32)
    else:  # 32-bit: e_phoff at 28, e_phentsize/e_phnum at 42/44
        (phoff,) = struct.unpack_from(endian + "I", data, 28)
    entsize, count = struct.unpack_from(endian + "HH", data, 54 if data[4] == 2 else 42)
    count = int(count)
    for index in range(count):
        offset = phoff + index * entsize
        if offset + 4 > len(data):
            return False
        (segment_type,) = struct.unpack_from(endian + "I", data, offset)
        if segment_type == _PT_INTERP:
            return False
    return count > 0


def find_static_busybox() -> Path | None:
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate).resolve()
        if path.is_file() and is_static_elf(path):
            return path
    return None


def build_context(busybox: Path) -> io.BytesIO:
    """An in-memory build context: the Dockerfile and the busybox binary."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload, mode in (
            ("Dockerfile", DOCKERFILE, 0o644),
            ("busybox", busybox.read_bytes(), 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(payload), mode
            tar.addfile(info, io.BytesIO(payload))
    buffer.seek(0)
    return buffer


def ensure_image(client: docker.DockerClient, tag: str, *, rebuild: bool) -> str:
    """Make sure `tag` exists; returns what was done."""
    import docker.errors  # noqa: PLC0415 - see main()

    if not rebuild:
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            pass
        else:
            return f"{tag}: already present"
    busybox = find_static_busybox()
    if busybox is not None:
        client.images.build(
            fileobj=build_context(busybox), custom_context=True, tag=tag, rm=True, forcerm=True
        )
        return f"{tag}: built from scratch around {busybox}"
    image = client.images.pull("busybox", "latest")
    repository, _, version = tag.rpartition(":")
    image.tag(repository, version)
    return f"{tag}: no static busybox on this machine; pulled busybox:latest"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"image tag (default {DEFAULT_TAG})")
    parser.add_argument("--rebuild", action="store_true", help="build even if the tag exists")
    parser.add_argument(
        "--check-busybox", action="store_true", help="only report whether a static busybox exists"
    )
    args = parser.parse_args(argv)
    if args.check_busybox:
        found = find_static_busybox()
        print(f"static busybox: {found or 'none'}")
        return 0 if found else 1
    # Imported here so that --check-busybox works before docker-py is installed.
    import docker  # noqa: PLC0415

    client = docker.from_env()
    try:
        print(ensure_image(client, args.tag, rebuild=args.rebuild))
    except docker.errors.DockerException as err:
        print(f"demo_image: could not build or pull {args.tag}: {err}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
