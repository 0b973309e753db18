"""Config checks: every field of every leanbert config refuses bad values with a `ValueError` naming the field, at
construction, on assignment and on loading; configs pass the checks of transformers' `ConfigTester`."""

import copy
import dataclasses
import json
import math
import re

import pytest
import torch
from transformers import AutoConfig, BertConfig, PretrainedConfig

import leanbert
from leanbert.configuration_shatter import MAX_NUM_PARTS

CONFIGS = (leanbert.SymBertConfig, leanbert.SharedBertConfig, leanbert.ShatterConfig)

# ConfigTester's inputs: hidden_size=37 is not a multiple of the default 12 heads, and a config must accept it
TESTER_INPUTS = dict(hidden_size=37)

# tests/test_configuration_common.py's `config_common_kwargs`, less the generation parameters that transformers 5
# drops from every config (BertConfig too)
COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": False,
    "is_decoder": True,
    "cross_attention_hidden_size": 128,
    "add_cross_attention": True,
    "tie_encoder_decoder": True,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "finetuning_task": "translation",
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "tokenizer_class": "BertTokenizerFast",
    "prefix": "prefix",
    "bos_token_id": 6,
    "pad_token_id": 7,
    "eos_token_id": 8,
    "sep_token_id": 9,
    "decoder_start_token_id": 10,
    "task_specific_params": {"translation": "some_params"},
    "problem_type": "regression",
}


def common_properties(config_class) -> list[str]:
    heads = [] if config_class is leanbert.ShatterConfig else ["num_attention_heads"]
    return ["hidden_size", *heads, "num_hidden_layers", "vocab_size"]


# ConfigTester's checks, one test each


@pytest.mark.parametrize("config_class", CONFIGS)
def test_common_properties(config_class):
    """As ConfigTester, with values from 1 rather than 0: hidden_size=0, which BertConfig takes for want of range
    checks, is refused here."""
    config = config_class(**TESTER_INPUTS)
    for value, name in enumerate(common_properties(config_class), start=1):
        setattr(config, name, value)
        assert getattr(config, name) == value
        assert getattr(config_class(**{name: value}), name) == value


@pytest.mark.parametrize("config_class", CONFIGS)
def test_to_json_string(config_class):
    obj = json.loads(config_class(**TESTER_INPUTS).to_json_string())
    assert all(obj[key] == value for key, value in TESTER_INPUTS.items())


@pytest.mark.parametrize("config_class", CONFIGS)
def test_to_json_file(config_class, tmp_path):
    first = config_class(**TESTER_INPUTS)
    first.to_json_file(tmp_path / "config.json")
    assert config_class.from_json_file(tmp_path / "config.json").to_dict() == first.to_dict()


@pytest.mark.parametrize("config_class", CONFIGS)
def test_from_and_save_pretrained(config_class, tmp_path):
    first = config_class(**TESTER_INPUTS)
    first.save_pretrained(tmp_path / "sub")
    assert config_class.from_pretrained(tmp_path / "sub").to_dict() == first.to_dict()
    assert config_class.from_pretrained(tmp_path, subfolder="sub").to_dict() == first.to_dict()
    with pytest.raises(OSError):
        config_class.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("config_class", CONFIGS)
def test_with_num_labels(config_class):
    config = config_class(**TESTER_INPUTS, num_labels=5)
    assert len(config.id2label) == len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == len(config.label2id) == 3


@pytest.mark.parametrize("config_class", CONFIGS)
def test_init_without_params(config_class):
    """ConfigTester's check that a config builds without arguments, and what it then holds: BertConfig's defaults
    (bert-base) in every field leanbert shares with it."""
    config, bert = config_class().to_dict(), BertConfig().to_dict()
    shared = own_fields(config_class) & set(bert)
    assert {"vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "hidden_act",
            "max_position_embeddings", "layer_norm_eps", "initializer_range"} <= shared
    assert {field: config[field] for field in shared} == {field: bert[field] for field in shared}


@pytest.mark.parametrize("config_class", CONFIGS)
def test_config_from_common_kwargs(config_class):
    config = config_class(**copy.deepcopy(COMMON_KWARGS))
    assert config.dtype == torch.float16
    assert not [key for key, value in COMMON_KWARGS.items() if key != "dtype" and getattr(config, key) != value]


# Single fields are checked on the config; rules between fields where the model is built


@pytest.mark.parametrize("config_class", CONFIGS)
def test_rules_between_fields_are_left_to_the_model(config_class):
    """Heads not dividing hidden_size, pad_token_id outside the vocabulary and Shatter's distance_scale below
    max_position_embeddings - 1 pass the config, as they pass BertConfig; building the model refuses them
    (test_modeling.py, test_shatter.py)."""
    related = dict(hidden_size=37, vocab_size=99, pad_token_id=99)
    extra = {"distance_scale": 10} if config_class is leanbert.ShatterConfig else {"num_attention_heads": 12}
    config = config_class(**related, **extra)
    config.validate()  # transformers' class validators, run on save: an out-of-vocabulary pad_token_id only warns
    assert BertConfig(**related, num_attention_heads=12).to_dict().items() >= related.items()
    assert config.to_dict().items() >= {**related, **extra}.items()


BAD_VALUES = {  # field -> values its rule refuses: wrong types (bool for int, str for number, ...), then ranges
    "vocab_size": [True, 1.0, "99", None, 0, -1],
    "hidden_size": [True, 32.0, "32", None, 0],
    "num_hidden_layers": [False, 2.0, "2", 0],
    "intermediate_size": [True, 37.5, "37", -5],
    "hidden_act": [None, 1, ["gelu"], "swishy", "GELU"],
    "hidden_dropout_prob": [True, "0.1", None, math.nan, math.inf, -0.1, 1.5, 2],
    "attention_probs_dropout_prob": [False, "0", None, math.nan, -0.1, 1.5],
    "max_position_embeddings": [True, 512.0, "512", None, 0],
    "type_vocab_size": [True, 2.0, "2", 0],
    "initializer_range": [True, "x", None, math.nan, math.inf, -0.02],
    "layer_norm_eps": [True, "1e-12", None, math.nan, math.inf, -math.inf, -1e-5],
    "pad_token_id": [True, 0.0, "0", -1],
    "classifier_dropout": [True, "0.1", math.nan, -0.1, 1.01],
    "tie_word_embeddings": [None, 1, 0, "no", "True"],
    "sparse_prediction": [None, 1, 0, "yes", "False"],
    "sparse_pred_ignore_index": [True, -100.0, "-100", None],
    "num_attention_heads": [True, 4.0, "4", None, 0, -4],
    "attention_mode": [None, 1, "full", "Pairwise"],
    "pairwise_init_std": [True, "1", None, math.nan, math.inf, 0, -1.0],
    "num_parts": [True, 2.0, "2", None, 0, MAX_NUM_PARTS + 1, 10**6],
    "partition": [None, 1, "cubic"],
    "distance_scale": [True, 511.0, "511", 0, -1],
    "attention_normalizer": [None, 0, "relu"],
    "absolute_position_embeddings": [None, 1, 0, "no", "False"],
    "key_projection": [None, 1, "yes"],
}
GOOD_VALUES = {  # edge values that must pass
    "hidden_dropout_prob": [0, 0.0, 0.999, 1.0], "classifier_dropout": [None, 0], "pad_token_id": [None, 0],
    "layer_norm_eps": [1, 1e-30, 0], "initializer_range": [0.0],  # as BertConfig accepts them
    "hidden_act": ["relu"], "distance_scale": [None, 1], "num_parts": [1, MAX_NUM_PARTS],
}
CASES = [(config_class, field, value) for config_class in CONFIGS for field in config_class.field_rules
         for value in BAD_VALUES[field]]


def own_fields(config_class) -> set[str]:
    """The dataclass fields leanbert declares (transformers' own fields are checked by its `@strict`)."""
    return {field.name for field in dataclasses.fields(config_class)} - {
        field.name for field in dataclasses.fields(PretrainedConfig)}


@pytest.mark.parametrize("config_class", CONFIGS)
def test_every_field_has_a_rule_and_bad_values(config_class):
    assert own_fields(config_class) == set(config_class.field_rules) <= set(BAD_VALUES)


def invalid(field: str, value) -> str:
    return re.escape(f"{field}={value!r} is invalid; ")


@pytest.mark.parametrize("config_class,field,value", CASES,
                         ids=[f"{c.__name__}-{f}-{v!r}" for c, f, v in CASES])
def test_bad_value_raises_value_error_naming_field_value_and_rule(config_class, field, value):
    allowed = config_class.field_rules[field].allowed
    with pytest.raises(ValueError, match=invalid(field, value) + re.escape(allowed)):
        config_class(**{field: value})
    config = config_class()
    with pytest.raises(ValueError, match=invalid(field, value)):
        setattr(config, field, value)
    assert getattr(config, field) == getattr(config_class(), field), "a refused value was kept"


@pytest.mark.parametrize("config_class", CONFIGS)
def test_edge_values_pass(config_class):
    for field, values in GOOD_VALUES.items():
        for value in values if field in config_class.field_rules else ():
            assert getattr(config_class(**{field: value}), field) == value


@pytest.mark.parametrize("config_class,field,value", [
    (leanbert.SymBertConfig, "initializer_range", "x"),
    (leanbert.SharedBertConfig, "layer_norm_eps", "Infinity"),  # json.loads reads it as float("inf")
    (leanbert.ShatterConfig, "absolute_position_embeddings", "no"),
    (leanbert.ShatterConfig, "num_parts", 1_000_000),
])
def test_loading_a_bad_config_json_raises_value_error(config_class, field, value, tmp_path):
    config_class().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    text = json.dumps({**json.loads(path.read_text()), field: value})
    path.write_text(text.replace('"Infinity"', "Infinity"))
    loaded = json.loads(path.read_text())[field]
    for load in (config_class.from_pretrained, AutoConfig.from_pretrained):
        with pytest.raises(ValueError, match=invalid(field, loaded)):
            load(tmp_path)


def test_num_parts_refusal_says_why():
    with pytest.raises(ValueError, match=f"must be an integer in \\[1, {MAX_NUM_PARTS}\\]: .*float32 precision"):
        leanbert.ShatterConfig(num_parts=MAX_NUM_PARTS + 1)
