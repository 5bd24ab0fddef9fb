"""The container boundary: which host paths a stage's step sees inside its container, and how each runtime is told.

Every path a step reads or writes (data, tokenizer, initial checkpoint, checkpoint directory, index cache, the run
directory, the orchestrator package) is mounted at the same path inside, so plans, logs and error messages read the
same inside and out. :func:`mounts` derives them from the stage's :class:`~orchestrator.stages.StagePaths`, after the
cluster profile's own ``container.mounts`` (a site's extras), and refuses a path no mount can serve, naming the path
and the fix, before anything is queued. A runtime turns the mounts, the environment names and the working directory
into its launch syntax: flags of ``srun`` (pyxis) or a command in front of the program (bubblewrap; Apptainer would be
another such class). docs/containers.md lists what is rendered and why.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

#: Folders that belong to the image: a host path inside one would hide what the image has there.
IMAGE_OWNED = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/proc", "/sys", "/dev", "/boot")
#: Signals the step's processes may get from Slurm (scancel, srun's forwarding, the time-limit USR2).
STEP_SIGNALS = "HUP,INT,TERM,USR1,USR2"


class MountError(ValueError):
    """A path a stage needs cannot be seen inside its container; the message names the path and the fix."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Mount:
        """A site mount as pyxis writes it: ``SRC[:DST[:ro|rw]]``."""
        parts = text.split(":")
        if (
            not 1 <= len(parts) <= 3
            or not parts[0].startswith("/")
            or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
        ):
            raise MountError(f"container.mounts entry {text!r}: expected /host/path[:/container/path[:ro|rw]]")
        target = parts[1] if len(parts) > 1 and parts[1] else parts[0]
        return cls(parts[0], target, len(parts) == 3 and parts[2] == "ro")

    def covers(self, path: str) -> bool:
        return _under(path, self.source)

    def inside(self, path: str) -> str:
        """Where host ``path`` (under this mount's source) appears inside the container."""
        rest = PurePosixPath(path).relative_to(self.source)
        return str(PurePosixPath(self.target) / rest)


def _under(path: str, folder: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(folder) or PurePosixPath(folder) in PurePosixPath(path).parents


def mounts(site_mounts: Sequence[str], reads: Iterable[str], writes: Iterable[str]) -> list[Mount]:
    """The site's mounts, then one same-path mount per folder a step needs that no earlier mount covers.

    A file is served by a mount of its folder. Writes are read-write, reads read-only (a folder both read and
    written is read-write). Refused, with the fix: a relative path, a path inside a login node's Python packages
    (a container has its own), a path in a folder that belongs to the image, and a path that a site mount shows
    elsewhere inside (it would not be where the plan says it is).
    """
    site = [Mount.parse(m) for m in site_mounts]
    wanted: dict[str, bool] = {}  # folder -> read-only
    for path, read_only in [*((p, True) for p in reads), *((p, False) for p in writes)]:
        if not path:
            continue
        folder = _folder(path)
        wanted[folder] = wanted.get(folder, True) and read_only
    result = list(site)
    for folder in sorted(wanted, key=lambda f: (len(PurePosixPath(f).parts), f)):
        covering = next((m for m in reversed(result) if m.covers(folder)), None)
        if covering is not None:
            if covering.inside(folder) != folder:
                raise MountError(
                    f"{folder} is needed inside the container at the same path, but the site mount "
                    f"{covering.source}:{covering.target} shows it at {covering.inside(folder)}; fix: mount "
                    f"{covering.source} at its own path ({covering.source}:{covering.source}) in the cluster "
                    "profile's container.mounts, or move the data"
                )
            if covering.read_only and not wanted[folder]:
                raise MountError(
                    f"{folder} is written by the step but the site mount {covering.source} is read-only; "
                    "fix: mount it read-write, or point the plan's output elsewhere"
                )
            continue
        result.append(Mount(folder, folder, wanted[folder]))
    return result


def _folder(path: str) -> str:
    """The folder to mount for ``path``: itself if it is (or will be) a folder, else the folder it is in."""
    if not path.startswith("/"):
        raise MountError(f"{path!r} is a relative path; a container needs absolute paths (fix: an absolute path)", path)
    if any(part in ("site-packages", "dist-packages") for part in PurePosixPath(path).parts):
        raise MountError(
            f"{path} lies inside a Python installation of the submitting machine; a container has its own "
            "(fix: copy the file under the cluster's data_root, or use a packaged reference such as "
            "mistral-common:tokenizer.model.v1, which is copied there at submission)",
            path,
        )
    folder = (
        path
        if os.path.isdir(path) or not os.path.exists(path) and not PurePosixPath(path).suffix
        else os.path.dirname(path)
    )
    if folder == "/" or any(_under(folder, owned) for owned in IMAGE_OWNED):
        raise MountError(
            f"{path}: {folder} belongs to the container image; fix: keep data, checkpoints and "
            "tokenizers outside /usr, /etc, /bin, /lib and the like",
            path,
        )
    return folder


class Runtime(Protocol):
    """How one container runtime is told what to run: its flags to ``srun`` and the command before the program."""

    name: str

    def srun_args(self, image: str, mounts: Sequence[Mount], env: Sequence[str], workdir: str) -> list[str]: ...

    def prefix(self, image: str, mounts: Sequence[Mount], env: Sequence[str], workdir: str) -> list[str]: ...

    def image_id(self, image: str) -> str:
        """A shell command whose output identifies the image (the log's first lines show it)."""
        ...


class Pyxis:
    """NVIDIA's pyxis/enroot: everything is a flag of ``srun``.

    ``--container-env`` names every variable the job sets: pyxis keeps a variable the image itself sets unless
    named there (the NeMo image sets several), so without it a profile's env could silently never reach the tasks.
    """

    name = "pyxis"

    def srun_args(self, image: str, mounts: Sequence[Mount], env: Sequence[str], workdir: str) -> list[str]:
        spec = ",".join(f"{m.source}:{m.target}" + (":ro" if m.read_only else "") for m in mounts)
        args = [f"--container-image={image}", f"--container-mounts={spec}", f"--container-workdir={workdir}"]
        if env:
            args.append(f"--container-env={','.join(env)}")
        return args

    def prefix(self, image: str, mounts: Sequence[Mount], env: Sequence[str], workdir: str) -> list[str]:
        return []

    def image_id(self, image: str) -> str:
        return f"ls -l --time-style=+%Y-%m-%dT%H:%M {_q(image)} 2>/dev/null || echo {_q(image + ' (pulled by enroot)')}"


class Bubblewrap:
    """bubblewrap (``bwrap``), the Slurm lab's runtime: a command in front of the program, inside ``srun``.

    The image is a folder with ``rootfs/``: its ``/usr`` and ``/etc`` are bound read-only into a private root, so
    mount points for host folders are made in that root (a host folder appears at its own path). Slurm signals every
    process of a step; bwrap's own monitor would die of them and take the program with it, so it ignores them and
    the program gets the default dispositions back (``env --default-signal``), seeing USR2 and TERM as without a
    container. ``PATH`` is the image's: the host's would name interpreters that do not exist inside.
    """

    name = "bubblewrap"

    def srun_args(self, image: str, mounts: Sequence[Mount], env: Sequence[str], workdir: str) -> list[str]:
        return []

    def prefix(self, image: str, mounts: Sequence[Mount], env: Sequence[str], workdir: str) -> list[str]:
        root = f"{image}/rootfs"
        args = [
            "env",
            f"--ignore-signal={STEP_SIGNALS}",
            "bwrap",
            "--die-with-parent",
            "--ro-bind",
            f"{root}/usr",
            "/usr",
            "--ro-bind",
            f"{root}/etc",
            "/etc",
        ]
        for link in ("bin", "sbin", "lib", "lib64"):
            args += ["--symlink", f"usr/{link}", f"/{link}"]
        args += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--ro-bind",
            "/sys",
            "/sys",
            "--tmpfs",
            "/tmp",
            "--ro-bind",
            "/etc/hosts",
            "/etc/hosts",
            "--ro-bind",
            "/etc/resolv.conf",
            "/etc/resolv.conf",
        ]
        for m in mounts:
            args += ["--ro-bind" if m.read_only else "--bind", m.source, m.target]
        args += [
            "--setenv",
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--chdir",
            workdir,
            "--",
            "env",
            f"--default-signal={STEP_SIGNALS}",
        ]
        return args

    def image_id(self, image: str) -> str:
        return f"cat {_q(image + '/image.env')}"


RUNTIMES: dict[str, Runtime] = {"pyxis": Pyxis(), "bubblewrap": Bubblewrap()}


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)
