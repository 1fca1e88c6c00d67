"""Model resolution and loading."""

from steerc.models.loading import DEFAULT_MODEL, LoadedModel, ModelSource, checkpoint_folder, load_config, load_model, resolve_model

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelSource", "checkpoint_folder", "load_config", "load_model", "resolve_model"]
