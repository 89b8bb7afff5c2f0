"""The model-config digest both engine adapters compute must agree for the same checkpoint."""

import json

from thaw.core import config_digest

from .engines import require

pytestmark = require("transformers", "run `bash scripts/setup.sh --test --engines`")


def test_engine_added_attributes_and_the_rope_type_alias_do_not_change_the_digest(tmp_path):
    from transformers import LlamaConfig

    from thaw.adapters.checkpoint import model_config_for_digest

    LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4).save_pretrained(tmp_path)
    plain = LlamaConfig.from_pretrained(tmp_path)
    dressed = LlamaConfig.from_pretrained(tmp_path)
    dressed.context_len, dressed.language_only = 4096, False  # what one engine adds
    if isinstance(dressed.rope_parameters, dict):
        dressed.rope_parameters = {**dressed.rope_parameters, "type": dressed.rope_parameters["rope_type"]}
    a = model_config_for_digest(plain, str(tmp_path))
    b = model_config_for_digest(dressed, str(tmp_path))
    assert config_digest(a) == config_digest(b)
    other = LlamaConfig.from_pretrained(tmp_path)
    other.num_hidden_layers = 3  # a real difference still counts
    assert config_digest(model_config_for_digest(other, str(tmp_path))) != config_digest(a)
    assert "num_hidden_layers" in json.loads(json.dumps(a))
