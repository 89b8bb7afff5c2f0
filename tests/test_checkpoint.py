"""The model-config digest both engine adapters compute must agree for the same checkpoint."""

import json

from thaw.core import config_digest

from .engines import require

pytestmark = require("transformers", "run `bash scripts/setup.sh --test --engines`")


def test_engine_added_attributes_and_the_rope_type_alias_do_not_change_the_digest(tmp_path):
    from transformers import LlamaConfig

    from thaw.core.checkpoint import model_config_for_digest

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


def test_config_digest_is_kept_per_config_object_while_it_lives(tmp_path):
    import gc

    from transformers import LlamaConfig

    from thaw.core import checkpoint
    from thaw.core.checkpoint import model_config_digest, model_config_for_digest

    LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4).save_pretrained(tmp_path)
    cfg = LlamaConfig.from_pretrained(tmp_path)
    digest = model_config_digest(cfg, str(tmp_path))
    assert digest == config_digest(model_config_for_digest(cfg, str(tmp_path)))
    assert model_config_digest(cfg, str(tmp_path)) == digest
    other = LlamaConfig.from_pretrained(tmp_path)
    other.num_hidden_layers = 3  # another engine's config object has its own digest
    assert model_config_digest(other, str(tmp_path)) != digest
    key = (id(other), str(tmp_path))
    del other
    gc.collect()
    assert key not in checkpoint._CONFIG_DIGESTS  # a dead object's number is free again


def test_only_a_missing_checkpoint_makes_the_weights_unknown(tmp_path):
    """Both handles treat `NoCheckpoint` (dummy weights, no local safetensors) as "weights
    unknown" and let every other failure through by name: a corrupt checkpoint, or a
    corrupt snapshot the engine was restored from, is never a silent unknown digest."""
    import pytest
    import torch
    from safetensors.torch import save_file

    from thaw.core.checkpoint import NoCheckpoint, read_checkpoint
    from thaw.core import ChecksumError, ThawError, load, save

    from .helpers import small_snapshot

    with pytest.raises(NoCheckpoint, match="dummy"):
        read_checkpoint(str(tmp_path), dummy=True)
    with pytest.raises(NoCheckpoint, match="not a local safetensors checkpoint"):
        read_checkpoint(str(tmp_path / "nowhere"), dummy=False)
    save_file({"w": torch.ones(4)}, str(tmp_path / "model.safetensors"))
    assert torch.equal(read_checkpoint(str(tmp_path), dummy=False)["w"], torch.ones(4))
    (tmp_path / "model.safetensors").write_bytes(b"\x08" + bytes(7) + b"{broken")
    with pytest.raises(Exception) as caught:
        read_checkpoint(str(tmp_path), dummy=False)
    assert not isinstance(caught.value, NoCheckpoint)
    save(small_snapshot(), tmp_path / "restored.thaw")  # what a handle reads after a restore
    held = load(tmp_path / "restored.thaw", verify=False).weights["w"]
    sec = held.container.section(held.section_name)
    with open(tmp_path / "restored.thaw", "r+b") as f:
        f.seek(sec.offset)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(ChecksumError) as caught:
        held.tensor()
    assert isinstance(caught.value, ThawError) and not isinstance(caught.value, NoCheckpoint)
