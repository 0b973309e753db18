"""The README's Python examples run as written, in order; the "Use" example does what its comments say: the saved
folder is a complete checkpoint (safetensors, config.json with an `auto_map` entry for every head, the code files
those entries and their imports name), `AutoModel` gives the saved encoder without the masked-LM head, and the
masked-LM logits are the saved model's own. (What the ONNX and LoRA examples produce is checked in test_onnx.py and
test_peft.py.)"""

import json
import re

import torch
from safetensors.torch import load_file

import leanbert
from conftest import HEADS, REPO


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    scopes = []
    for block in blocks:
        scope = {"__name__": "__readme__"}
        exec(compile(block, "README.md", "exec"), scope)
        scopes.append(scope)
    printed = capsys.readouterr().out.splitlines()
    (use,) = [scope for block, scope in zip(blocks, scopes) if 'save_pretrained("tiny-symbert")' in block]
    folder = tmp_path / "tiny-symbert"

    # "config.json with a full auto_map + the code files": SymBert's config and its six heads (the README: "Every
    # architecture has `...Model`, `...ForMaskedLM`, ..."), each under its Auto class and defined in the file named,
    # and every module those files import from their own folder saved beside them
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_sym_bert.SymBertConfig",
                        **{"AutoModel" + ("" if head == "Model" else head): f"modeling_sym_bert.SymBert{head}"
                           for head in HEADS}}
    for reference in auto_map.values():
        module, name = reference.split(".")
        assert re.search(rf"^class {name}\(", (folder / f"{module}.py").read_text(), flags=re.M), reference
    for code in folder.glob("*.py"):
        for module in re.findall(r"^from \.(\w+) import", code.read_text(), flags=re.M):
            assert (folder / f"{module}.py").is_file(), f"{code.name} imports .{module}, which was not saved"

    # "safetensors": the saved tensors are the model's
    model = use["model"].eval()
    saved = load_file(folder / "model.safetensors")
    assert saved
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, model.state_dict()[name], atol=0, rtol=0, msg=name)

    # "a SymBertModel; the MLM head is left out": the saved encoder, tensor for tensor, and nothing of the head
    encoder = use["encoder"]
    assert type(encoder) is leanbert.SymBertModel
    assert not any(name.startswith(("cls.", "predictions.")) for name in encoder.state_dict())
    for name, tensor in model.sym_bert.state_dict().items():
        torch.testing.assert_close(encoder.state_dict()[name], tensor, atol=0, rtol=0, msg=name)

    # the reloaded eager model's logits are the saved model's (default SDPA attention), over BERT's 30522 tokens
    with torch.no_grad():
        expected = model(torch.tensor([[101, 7592, 103, 102]])).logits
    torch.testing.assert_close(use["logits"], expected, atol=1e-5, rtol=1e-5)
    assert printed[0] == "SymBertModel torch.Size([1, 4, 30522])"
