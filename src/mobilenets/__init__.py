"""mobilenets: MobileNetV1/V2/V3 built exactly as published, for classification, detection and segmentation."""

from mobilenets.analysis.profile import Profile, profile
from mobilenets.checkpoint import save_weights
from mobilenets.errors import CheckpointError, ConfigError, InputError, MobilenetsError
from mobilenets.registry import create_model, list_models, read_weights, register_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputError",
    "MobilenetsError",
    "Profile",
    "create_model",
    "list_models",
    "profile",
    "read_weights",
    "register_model",
    "save_weights",
]
