"""Deployment targets for compiled engine folders (Triton Inference Server model repositories)."""

from steerc.deploy.triton import export_triton

__all__ = ["export_triton"]
