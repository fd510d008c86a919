"""Artifacts: an export folder with a manifest, cached by content hash and verified before use.

The cache key covers the model spec (architecture, weights, model code), the format, the
precision recipe and the exporter's own code, so a second export of the same thing is a no-op and
a changed exporter never reuses a stale graph. A truncated or altered file is detected from the
sizes and SHA-256 digests in the manifest before any runtime touches it.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from slmbench.models.spec import ModelSpec

MANIFEST = "manifest.json"
SCHEMA = 1


class ArtifactError(RuntimeError):
    """An artifact that is missing, incomplete or altered."""


class NotCached(ArtifactError):
    """Inside `cached_only()`: the artifact would have to be exported here."""


_CACHED_ONLY = contextvars.ContextVar("cached_only", default=False)


@contextmanager
def cached_only() -> Iterator[None]:
    """Within this block an artifact that is not in the cache (or fails verification) raises
    NotCached instead of being exported in this process; the caller exports it elsewhere."""
    token = _CACHED_ONLY.set(True)
    try:
        yield
    finally:
        _CACHED_ONLY.reset(token)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SLMBENCH_CACHE_DIR") or Path.home() / ".cache" / "slmbench" / "artifacts")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def describe_files(folder: Path) -> dict[str, dict]:
    return {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name not in (MANIFEST, VERIFIED)}


VERIFIED = ".verified.json"


def _stat_key(file: Path) -> list[int]:
    """What any write moves: the change time too, which `touch -d` cannot set back."""
    st = file.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _verify(path: Path, files: dict[str, dict]) -> None:
    """Sizes always; SHA-256 digests unless the files are untouched (same size, mtime, ctime and
    inode) since they were last hashed, so a cache hit on a 1.5 GB graph costs milliseconds, not
    seconds, while any write to a file forces a full re-hash: an in-place edit with its mtime set
    back still moves the ctime, which no user call can restore."""
    try:
        stamp = json.loads((path / VERIFIED).read_text())
    except (OSError, ValueError):
        stamp = {}
    current = {}
    for name, info in files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"artifact file {file} is missing; delete {path} to re-export")
        if file.stat().st_size != info["bytes"]:
            raise ArtifactError(f"artifact file {file} is truncated or altered "
                                f"({file.stat().st_size} bytes, manifest says {info['bytes']})")
        current[name] = _stat_key(file)
        if stamp.get(name) != [info["sha256"], *current[name]] and file_digest(file) != info["sha256"]:
            raise ArtifactError(f"artifact file {file} does not match its manifest digest (altered)")
    _write_stamp(path, files, current)


def _write_stamp(path: Path, files: dict[str, dict], stats: dict[str, list[int]] | None = None) -> None:
    stats = stats or {name: _stat_key(path / name) for name in files}
    try:
        (path / VERIFIED).write_text(json.dumps({n: [files[n]["sha256"], *k] for n, k in stats.items()}))
    except OSError:
        pass  # a read-only cache is verified in full every time


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def key(self) -> str:
        return self.manifest["artifact_key"]

    def graph(self, role: str) -> dict:
        return self.manifest["graphs"][role]

    def graph_path(self, role: str) -> Path:
        return self.path / self.graph(role)["file"]

    @property
    def weight_bytes(self) -> int:
        return int(self.manifest.get("weight_bytes", 0))

    @classmethod
    def open(cls, path: Path | str, verify: bool = True) -> Artifact:
        """Read and check an artifact folder; raise ArtifactError naming what is wrong."""
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{path} has no {MANIFEST}: not an slmbench artifact (re-export it)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path / MANIFEST} is corrupt ({exc}); delete the folder to re-export") from None
        if manifest.get("schema") != SCHEMA or "files" not in manifest or "graphs" not in manifest:
            raise ArtifactError(f"{path / MANIFEST} has an unknown schema; delete the folder to re-export")
        if verify:
            _verify(path, manifest["files"])
        return cls(path, manifest)


def artifact_key(spec: ModelSpec, fmt: str, variant: dict, exporter_code: str) -> str:
    payload = {"spec": spec.content_hash(), "format": fmt, "variant": variant, "exporter": exporter_code}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{spec.name.replace('/', '_').replace(':', '_')}-{fmt}-{digest}"


def code_digest(*modules: str) -> str:
    """Digest of exporter source files and of the code every export passes through (the model
    blocks and families it traces, the reference it is checked against, the ONNX shape folding
    that IR and quantized artifacts inherit), so that a change to any of them invalidates the cache."""
    import slmbench.models

    # By path, not by import: blocks.py and families.py import torch, which a cache hit must not pay for.
    models = Path(slmbench.models.__file__).parent
    h = hashlib.sha256()
    for module in (*modules, models / "blocks.py", models / "families.py", models / "reference.py",
                   Path(__file__).parent / "fold_shapes.py"):
        h.update(Path(module).read_bytes())
    return h.hexdigest()[:16]


ExportFn = Callable[[ModelSpec, Path, dict], dict]


def ensure_artifact(spec: ModelSpec, fmt: str, variant: dict, export_fn: ExportFn, exporter_code: str,
                    cache_dir: Path | None = None, force: bool = False) -> tuple[Artifact, bool]:
    """Return (artifact, reused). A vision model's variant gains the image size its tower takes.
    Exports into a temporary folder and renames it into place, so an
    interrupted export never leaves a half-written artifact behind. A corrupt cached artifact is
    re-exported with a warning."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if spec.image is not None:  # one artifact per image size: prune_cache keeps each size's newest
        variant = {**variant, "image_size": spec.image}
    key = artifact_key(spec, fmt, variant, exporter_code)
    final = cache_dir / key
    if final.exists() and not force:
        try:
            return Artifact.open(final), True
        except ArtifactError as exc:
            if _CACHED_ONLY.get():
                raise NotCached(str(exc)) from None
            warnings.warn(f"re-exporting: {exc}", stacklevel=2)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ArtifactError(f"the artifact cache {cache_dir} is a file, not a folder; choose another --cache-dir "
                            "or SLMBENCH_CACHE_DIR")
    if _CACHED_ONLY.get():
        raise NotCached(f"{key} is not in {cache_dir}")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    except OSError as exc:
        raise ArtifactError(f"cannot write to the artifact cache {cache_dir}: {exc.strerror}; choose another "
                            "--cache-dir or SLMBENCH_CACHE_DIR") from None
    os.chmod(tmp, 0o755)
    try:
        started = time.perf_counter()
        manifest = export_fn(spec, tmp, variant)
        files = describe_files(tmp)
        manifest.update({
            "schema": SCHEMA, "format": fmt, "artifact_key": key, "model": spec.name,
            "family": spec.family.value, "parameters": spec.parameters, "config": spec.config.to_dict(),
            "source": spec.source, "seed": spec.seed, "spec_hash": spec.content_hash(), "variant": variant,
            "files": files, "export_seconds": time.perf_counter() - started,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        manifest.setdefault("weight_bytes", sum(f["bytes"] for f in files.values()))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_stamp(final, files)  # digests were just computed: the next open need not re-hash
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(final, manifest), False


STALE_EXPORT_S = 3600  # a temporary export folder untouched this long was left by a killed export


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prune_cache(cache_dir: Path | str | None = None, dry_run: bool = False) -> dict:
    """Keep the newest artifact of each model, format and variant (precision, OpenVINO mode, static
    shapes); the older ones were made by earlier exporter or model code and are never used again.
    Folders that are not readable artifacts and temporary folders of exports killed an hour or
    more ago go too. Returns {"kept": [...], "removed": [...], "freed_bytes": n}, each entry
    {"path", "bytes", "why"}; with `dry_run` nothing is deleted."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if not cache_dir.is_dir():
        raise ArtifactError(f"no artifact cache at {cache_dir}" + (" (it is a file)" if cache_dir.exists() else ""))
    newest: dict[str, tuple[float, Path]] = {}
    removed = []
    for path in sorted(p for p in cache_dir.iterdir() if p.is_dir()):
        if path.name.startswith("."):
            if time.time() - path.stat().st_mtime >= STALE_EXPORT_S:
                removed.append((path, "left by an interrupted export"))
            continue
        try:
            manifest = Artifact.open(path, verify=False).manifest
        except ArtifactError as exc:
            removed.append((path, f"not a readable artifact ({exc})"))
            continue
        group = json.dumps([manifest.get("model"), manifest.get("format"), manifest.get("variant")], sort_keys=True)
        made = (path / MANIFEST).stat().st_mtime
        if group in newest:
            older = min(newest[group], (made, path))
            removed.append((older[1], "an older export of the same model, format and variant"))
            newest[group] = max(newest[group], (made, path))
        else:
            newest[group] = (made, path)
    gone = [{"path": str(p), "bytes": _folder_bytes(p), "why": why} for p, why in removed]
    if not dry_run:
        for p, _ in removed:
            shutil.rmtree(p, ignore_errors=True)
    kept = [{"path": str(p), "bytes": _folder_bytes(p), "why": "newest"} for _, p in sorted(newest.values())]
    return {"kept": kept, "removed": gone, "freed_bytes": sum(g["bytes"] for g in gone), "dry_run": dry_run}
