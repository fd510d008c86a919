"""Turning a `ModelSpec` into runnable artifacts: a folder of graphs plus a manifest.json that says
everything about them, cached by content hash (see `slmbench.exporters.artifact`)."""

from slmbench.exporters.artifact import Artifact, ArtifactError, ensure_artifact

__all__ = ["Artifact", "ArtifactError", "ensure_artifact"]
