"""LoRA with PEFT: importing leanbert gives PEFT each architecture's default LoRA target modules
(`Architecture.lora_target_modules`), so `LoraConfig(task_type=...)` without `target_modules` wraps exactly those
projections in every layer. For every declared architecture and three task types, LoRA trains, merges (the merged
model's output equals the adapter's), saves and reloads. Also runs the README's "LoRA with PEFT" example."""

import json
import re
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_TARGETS
from peft.utils.other import ModulesToSaveWrapper
from safetensors.torch import load_file

import leanbert
from conftest import REPO, TINY, tiny_config

DECLARED = [pytest.param(architecture, id=architecture.model_type) for architecture in leanbert.ARCHITECTURES]
# task type -> the Auto class of the model PEFT wraps for it
TASKS = {TaskType.SEQ_CLS: "AutoModelForSequenceClassification", TaskType.TOKEN_CLS: "AutoModelForTokenClassification",
         TaskType.FEATURE_EXTRACTION: "AutoModel"}
HEAD_PARAMETERS = {f"base_model.model.classifier.modules_to_save.default.{name}" for name in ("weight", "bias")}
SEED = 0


def build(architecture, task: TaskType, **overrides) -> torch.nn.Module:
    """A tiny model of the task's class, the same weights for the same seed."""
    torch.manual_seed(SEED)
    return architecture.classes[TASKS[task]](tiny_config(architecture.model_type, num_labels=3, **overrides))


def lora_config(task: TaskType, **fields) -> LoraConfig:
    return LoraConfig(task_type=task, r=4, lora_alpha=8, lora_dropout=0.0, **fields)


def wrapped_modules(model: PeftModel) -> set[str]:
    """Names of the LoRA-wrapped modules, relative to the encoder ("encoder.layer.0.attention.self.value")."""
    prefix = model.base_model.model.base_model_prefix
    return {name.removeprefix("base_model.model.").removeprefix(f"{prefix}.")
            for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def expected_modules(targets, num_layers: int = TINY["num_hidden_layers"]) -> set[str]:
    return {f"encoder.layer.{i}.attention.self.{target}" for i in range(num_layers) for target in targets}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def inputs():
    """Two fixed sequences, the second padded; labels for each task."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, TINY["vocab_size"], (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    input_ids[1, 6:] = 0
    token_labels = torch.randint(0, 3, (2, 9), generator=generator).masked_fill(attention_mask == 0, -100)
    return dict(input_ids=input_ids, attention_mask=attention_mask, sequence_labels=torch.tensor([0, 2]),
                token_labels=token_labels, direction=torch.randn(TINY["hidden_size"], generator=generator))


def forward(model, task: TaskType, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, loss): logits with the head's own loss, or for the encoder alone the last hidden state's mean cosine
    distance to a fixed direction, as a contrastive or regression objective would use it."""
    batch = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    if task is TaskType.FEATURE_EXTRACTION:
        hidden = model(**batch).last_hidden_state
        valid = inputs["attention_mask"].bool()
        return hidden, 1 - torch.cosine_similarity(hidden[valid], inputs["direction"], dim=-1).mean()
    labels = inputs["sequence_labels" if task is TaskType.SEQ_CLS else "token_labels"]
    out = model(**batch, labels=labels)
    return out.logits, out.loss


@pytest.mark.parametrize("architecture", DECLARED)
def test_importing_leanbert_registers_the_declared_targets(architecture, monkeypatch):
    assert architecture.lora_target_modules, f"{architecture.name} declares no LoRA target modules"
    assert LORA_TARGETS[architecture.model_type] == list(architecture.lora_target_modules)
    # each declared name is a Linear in every layer's attention block: PEFT silently skips a name that matches nothing
    # as long as another one matches (BERT's "query" on SymBert)
    model = build(architecture, TaskType.FEATURE_EXTRACTION)
    for layer in model.encoder.layer:
        for target in architecture.lora_target_modules:
            assert isinstance(getattr(layer.attention.self, target, None), torch.nn.Linear), target
    # without the registration PEFT refuses a LoraConfig with no target_modules
    monkeypatch.delitem(LORA_TARGETS, architecture.model_type)
    with pytest.raises(ValueError, match="target_modules"):
        get_peft_model(model, lora_config(TaskType.FEATURE_EXTRACTION))


def test_registration_happens_on_import():
    """In a fresh interpreter, `import leanbert` alone (PEFT not imported before it) fills PEFT's table."""
    code = ("import json, leanbert\n"
            "from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as targets\n"
            "print(json.dumps({a.model_type: targets.get(a.model_type) for a in leanbert.ARCHITECTURES}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    registered = json.loads(result.stdout.strip().splitlines()[-1])
    assert registered == {a.model_type: list(a.lora_target_modules) for a in leanbert.ARCHITECTURES}


@pytest.mark.parametrize("task", list(TASKS), ids=lambda task: task.value)
@pytest.mark.parametrize("architecture", DECLARED)
def test_lora_wraps_trains_merges_saves_and_reloads(architecture, task, inputs, tmp_path):
    targets = architecture.lora_target_modules
    base = build(architecture, task)
    base_weights = {name: p.detach().clone() for name, p in base.named_parameters()}
    config = lora_config(task)
    assert config.target_modules is None
    model = get_peft_model(base, config)

    # exactly the declared modules in every layer are wrapped, and only LoRA (and the head PEFT keeps) trains
    assert wrapped_modules(model) == expected_modules(targets)
    assert len(wrapped_modules(model)) == TINY["num_hidden_layers"] * len(targets)
    lora_parameters = {name for name, _ in model.named_parameters() if ".lora_A." in name or ".lora_B." in name}
    assert len(lora_parameters) == 2 * TINY["num_hidden_layers"] * len(targets)
    head = set() if task is TaskType.FEATURE_EXTRACTION else HEAD_PARAMETERS
    assert {name for name, p in model.named_parameters() if p.requires_grad} == lora_parameters | head
    lora_b = {name: p for name, p in model.named_parameters() if ".lora_B." in name}
    assert all(torch.count_nonzero(p) == 0 for p in lora_b.values())

    # it trains: the loss falls and every B matrix leaves zero; the frozen base weights do not move
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(10):
        _, loss = forward(model, task, inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(torch.count_nonzero(p) == p.numel() for p in lora_b.values())
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            relative = name.removeprefix("base_model.model.")
            assert torch.equal(module.base_layer.weight, base_weights[f"{relative}.weight"]), name

    model.eval()
    with torch.no_grad():
        adapted, _ = forward(model, task, inputs)
        with model.disable_adapter():
            plain, _ = forward(model, task, inputs)
    assert not torch.allclose(adapted, plain, atol=1e-4), "the trained adapter does not change the output"

    # save and reload onto a fresh base with the same initial weights
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved["target_modules"]) == set(targets)
    assert saved["task_type"] == task.value
    saved_weights = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert {key for key in saved_weights if "lora_" not in key} == (
        set() if task is TaskType.FEATURE_EXTRACTION else {"base_model.model.classifier.weight",
                                                            "base_model.model.classifier.bias"})
    reloaded = PeftModel.from_pretrained(build(architecture, task), tmp_path).eval()
    assert wrapped_modules(reloaded) == expected_modules(targets)
    with torch.no_grad():
        torch.testing.assert_close(forward(reloaded, task, inputs)[0], adapted, rtol=0, atol=1e-6)

    # merge: a plain leanbert model, with no LoRA left, giving the adapter's output
    merged = model.merge_and_unload().eval()
    assert type(merged) is architecture.classes[TASKS[task]]
    assert not any(isinstance(module, (BaseTunerLayer, ModulesToSaveWrapper)) for module in merged.modules())
    assert not any("lora" in name or "modules_to_save" in name for name, _ in merged.named_parameters())
    assert set(dict(merged.named_parameters())) == set(base_weights)
    with torch.no_grad():
        torch.testing.assert_close(forward(merged, task, inputs)[0], adapted, rtol=1e-5, atol=1e-5)
    encoder = "" if task is TaskType.FEATURE_EXTRACTION else f"{merged.base_model_prefix}."
    for module in expected_modules(targets):  # the update is in the merged weights
        merged_weight = merged.get_submodule(encoder + module).weight
        assert not torch.allclose(merged_weight, base_weights[f"{encoder}{module}.weight"]), module


@pytest.mark.parametrize("variant", ["sym_bert/symmetric", "shatter/learned", "shatter/sigmoid"])
def test_config_variants_wrap_the_same_modules(variant):
    """Other config variants (symmetric SymBert, learned partition, Shatter with a key projection) keep the same
    default targets; Shatter's optional `key` stays frozen unless named."""
    config = tiny_config(variant)
    architecture = next(a for a in leanbert.ARCHITECTURES if a.config_class is type(config))
    torch.manual_seed(SEED)
    model = get_peft_model(architecture.classes["AutoModel"](config), lora_config(TaskType.FEATURE_EXTRACTION))
    assert wrapped_modules(model) == expected_modules(architecture.lora_target_modules)


def test_shatter_key_and_feed_forward_can_be_added():
    """The README's extra names: Shatter's `key` (with key_projection=True) and the feed-forward's
    `intermediate.dense` / `output.dense`; `output.dense` also matches the attention output projection where there
    is one (SymBert, SharedBert; Shatter folds it into `value`)."""
    for architecture in leanbert.ARCHITECTURES:
        overrides = {"key_projection": True} if architecture.config_class is leanbert.ShatterConfig else {}
        extra = ["key"] if overrides else []
        model = get_peft_model(build(architecture, TaskType.FEATURE_EXTRACTION, **overrides), lora_config(
            TaskType.FEATURE_EXTRACTION,
            target_modules=[*architecture.lora_target_modules, *extra, "intermediate.dense", "output.dense"]))
        has_projection = model.base_model.model.encoder.layer[0].attention.output.dense is not None
        expected = expected_modules([*architecture.lora_target_modules, *extra]) | {
            f"encoder.layer.{i}.{name}" for i in range(TINY["num_hidden_layers"])
            for name in ("intermediate.dense", "output.dense", *(["attention.output.dense"] if has_projection else []))}
        assert wrapped_modules(model) == expected, architecture.name


def test_readme_lora_example_runs(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    section = re.search(r"### LoRA with PEFT\n(.*?)\n## ", readme, flags=re.S)
    assert section, "README has no 'LoRA with PEFT' section"
    for architecture in leanbert.ARCHITECTURES:
        for target in architecture.lora_target_modules:
            assert f"`{target}`" in section.group(1), f"README does not list {architecture.name}'s `{target}`"
    (block,) = re.findall(r"```python\n(.*?)```", section.group(1), flags=re.S)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(SEED)
    leanbert.SymBertForMaskedLM(tiny_config("sym_bert")).save_pretrained("tiny-symbert")
    scope = {"__name__": "__readme__"}
    exec(compile(block, "README.md", "exec"), scope)
    # what the example's comment says: "LoRA on query_key and value in every layer, plus the classifier" (SymBert's
    # row of the README's table), so exactly those projections are wrapped, and only they and the classifier train
    peft_model = scope["peft_model"]
    assert wrapped_modules(peft_model) == expected_modules(("query_key", "value"))
    trainable = {name for name, parameter in peft_model.named_parameters() if parameter.requires_grad}
    assert {name for name in trainable if ".lora_" not in name} == HEAD_PARAMETERS
    prefix = f"base_model.model.{peft_model.base_model.model.base_model_prefix}."
    assert {name.removeprefix(prefix).split(".lora_")[0] for name in trainable if ".lora_" in name} == \
        expected_modules(("query_key", "value"))
