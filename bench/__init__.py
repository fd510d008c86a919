"""slmbench: first-token latency and throughput of small encoder-decoder vs decoder-only models.

Flow: ModelSpec (slmbench.models) -> Artifact (slmbench.exporters) -> Runner (slmbench.runners)
-> Measurement (slmbench.core.measure) -> result rows (slmbench.results) -> report (slmbench.report.markdown).
Heavy libraries (torch, onnxruntime, openvino, matplotlib) are imported only where used.
"""

__version__ = "0.1.0"
