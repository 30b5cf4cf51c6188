"""The BentoML inference service. Never imports torch: numpy, onnxruntime, pydicom, pydantic."""
