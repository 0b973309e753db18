"""leanbert: leaner BERT encoders for Hugging Face transformers.

Importing the package registers every architecture with the Auto classes, so that
`AutoModel.from_pretrained("./symbert-minilm")` works like it does for BERT, and, when PEFT is installed, gives PEFT
each architecture's default LoRA target modules. Both derive from the declarations in `architectures.py`.

So the import defines every config and model class, and with them loads torch and transformers' model code: the
Auto classes register classes, not names that could load later as transformers' own models do, and leanbert does
not reach into their private mappings. Nothing else loads here: `common`, `publishing`, `conversion`, `training`,
`healing`, `export` and `commands` are subpackages, imported when used.
"""

import transformers
from packaging.version import Version

__version__ = "0.1.0"
REQUIRED_TRANSFORMERS = "5.0"

if Version(transformers.__version__) < Version(REQUIRED_TRANSFORMERS):
    raise ImportError(f"leanbert {__version__} needs transformers >= {REQUIRED_TRANSFORMERS} (this environment has "
                      f"{transformers.__version__}); the checkpoints it saves load without leanbert on transformers "
                      "4.48 or later, with trust_remote_code=True")

from .architectures import ARCHITECTURES, Architecture  # noqa: E402

__all__ = ["ARCHITECTURES", "Architecture"]
for _architecture in ARCHITECTURES:
    transformers.AutoConfig.register(_architecture.model_type, _architecture.config_class, exist_ok=True)
    for _auto_name, _model_class in _architecture.classes.items():
        getattr(transformers, _auto_name).register(_architecture.config_class, _model_class, exist_ok=True)
    for _export in _architecture.exports:
        globals()[_export.__name__] = _export
        __all__.append(_export.__name__)


def _register_lora_targets() -> None:
    """PEFT's `LoraConfig` without `target_modules` looks the model type up in this table."""
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as targets
    except ImportError:
        return
    for architecture in ARCHITECTURES:
        targets.setdefault(architecture.model_type, list(architecture.lora_target_modules))


_register_lora_targets()
