"""What a published leanbert model says about itself and how it reaches the Hub: the model card every writer puts into
its output (`write_model_card`, `for_repo`) and the one-commit upload of an output folder (`check_access`,
`push_folder`). Conversion, training, healing and export write cards; the commands push."""

from .cards import for_repo, write_model_card
from .hub import check_access, push_folder

__all__ = ["check_access", "for_repo", "push_folder", "write_model_card"]
