"""The bundle's configs as they were at server start: a private copy with sha256, verified before use.

Inference and training read the copy, never a file a request could have written; training refuses
when either the copy or the bundle's configs changed since start-up.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Mapping, Union

from scripts.digest import sha256_file

from .errors import ConfigChangedError
from .names import is_within

__all__ = ["ConfigSnapshot"]

logger = logging.getLogger(__name__)


class ConfigSnapshot:
    """The bundle's configs as they were at server start, in a private folder, with their sha256.

    The server process takes it once (``configs/`` of the bundle, plus any extra config file) into a
    ``mkdtemp`` folder (mode 0700) outside the bundle and the datastore, and publishes it in the
    environment variable :attr:`ENV`; the background training processes MONAI Label starts inherit
    the variable and use the same copy. :meth:`verify` refuses (:class:`ConfigChangedError`) when a
    copied file or the bundle's own file no longer has its start-up hash.

    Args:
        bundle_root: the bundle folder.
        folder: the snapshot folder (mirrors the bundle's relative paths).
        files: bundle-relative path -> sha256.
    """

    ENV = "MEDICAL_MATTING_CONFIG_SNAPSHOT"
    PREFIX = "medical_matting_configs_"
    OWNER = ".owner_pid"
    _cache: Dict[str, "ConfigSnapshot"] = {}

    def __init__(self, bundle_root: Union[str, os.PathLike], folder: Union[str, os.PathLike], files: Mapping[str, str]):
        self.bundle_root = Path(bundle_root).resolve()
        self.folder = Path(folder)
        self.files = dict(files)

    @classmethod
    def take(cls, bundle_root: Union[str, os.PathLike], extra: Iterable[Union[str, os.PathLike]] = ()) -> "ConfigSnapshot":
        """Copy ``<bundle_root>/configs`` (and ``extra`` files inside the bundle) into a new private folder."""
        root = Path(bundle_root).resolve()
        sources = sorted(p for p in (root / "configs").rglob("*") if p.is_file())
        sources += [Path(e).resolve() for e in extra if Path(e).is_file()]
        folder = Path(tempfile.mkdtemp(prefix=cls.PREFIX))
        files: Dict[str, str] = {}
        for src in sources:
            rel = cls._key(root, src)
            if rel in files:
                continue
            dest = folder / rel.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            files[rel] = sha256_file(dest)
        owner = os.getpid()
        (folder / cls.OWNER).write_text(str(owner))
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
        cls._remove_stale(folder.parent)
        return cls(root, folder, files)

    @classmethod
    def _remove_stale(cls, parent: Path) -> None:
        """Remove snapshots of server processes that are gone (killed servers do not run ``atexit``)."""
        for old in parent.glob(f"{cls.PREFIX}*"):
            try:
                if os.stat(old).st_uid != os.getuid():
                    continue
                os.kill(int((old / cls.OWNER).read_text()), 0)
            except ProcessLookupError:
                shutil.rmtree(old, ignore_errors=True)
            except (OSError, ValueError):
                continue

    @classmethod
    def for_bundle(cls, bundle_root: Union[str, os.PathLike], extra: Iterable[Union[str, os.PathLike]] = ()) -> "ConfigSnapshot":
        """This process's snapshot of ``bundle_root``: inherited from the server, or taken now."""
        root = str(Path(bundle_root).resolve())
        if root in cls._cache:
            return cls._cache[root]
        inherited = json.loads(os.environ.get(cls.ENV) or "{}")
        if root in inherited:
            snap = cls(root, inherited[root]["folder"], inherited[root]["files"])
        else:
            snap = cls.take(root, extra)
            inherited[root] = {"folder": str(snap.folder), "files": snap.files}
            os.environ[cls.ENV] = json.dumps(inherited)
            logger.info(f"medical_matting: configs of {root} snapshotted to {snap.folder} ({len(snap.files)} files)")
        cls._cache[root] = snap
        return snap

    @staticmethod
    def _key(root: Path, path: Union[str, os.PathLike]) -> str:
        """Bundle-relative POSIX path of a config in the bundle; its absolute path otherwise."""
        p = Path(path)
        p = p.resolve() if p.is_absolute() else (root / p).resolve()
        return p.relative_to(root).as_posix() if is_within(p, root) else p.as_posix()

    def _original(self, key: str) -> Path:
        return Path(key) if key.startswith("/") else self.bundle_root / key

    def path(self, config: Union[str, os.PathLike]) -> Path:
        """The snapshot copy of a config given relative to the bundle root (or as an absolute path)."""
        key = self._key(self.bundle_root, config)
        if key not in self.files:
            raise ConfigChangedError(f"config {config} was not part of the configs snapshotted at server start")
        return self.folder / key.lstrip("/")

    def verify(self) -> None:
        """:class:`ConfigChangedError` when a config differs from its start-up hash (copy or bundle)."""
        changed = []
        for rel, digest in self.files.items():
            for path in (self.folder / rel.lstrip("/"), self._original(rel)):
                if not path.is_file() or sha256_file(path) != digest:
                    changed.append(str(path))
        if changed:
            raise ConfigChangedError(
                f"configs changed since the server started ({', '.join(changed[:4])}); training refused: "
                "restart the server to use the new configs")
