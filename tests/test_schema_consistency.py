"""Files whose header is valid JSON with valid checksums but does not mean one thing: the
loader refuses each, naming the field (headers edited and re-checksummed with `forge`)."""

import json
import os

import pytest

import thaw
from thaw.core.container import Container

from .helpers import forge, small_snapshot


def _edited(tmp_path, edit):
    """The small snapshot's file with its header's meta changed by `edit` (CRCs recomputed)."""
    src = tmp_path / "src.thaw"
    thaw.save(small_snapshot(), src)
    c = Container(src)
    header = {"meta": json.loads(json.dumps(c.meta)),
              "sections": [s.to_json() for s in c.sections.values()]}
    edit(header["meta"])
    raw = src.read_bytes()
    out = tmp_path / "edited.thaw"
    forge(out, header, raw[c.data_start:], hlen=c.data_start - 32)
    return out


def _refused(tmp_path, edit, match):
    path = _edited(tmp_path, edit)
    with pytest.raises(thaw.SchemaError, match=match):
        thaw.load(path)


def test_unedited_file_loads(tmp_path):
    thaw.load(_edited(tmp_path, lambda m: None))


def test_two_kv_layers_on_one_section(tmp_path):
    def edit(m):
        m["kv"]["layers"][1] = m["kv"]["layers"][0]
    _refused(tmp_path, edit, "already used by kv layer 0")


def test_weight_pointing_at_a_kv_section(tmp_path):
    def edit(m):
        w = m["weights"][0]
        w["section"], w["shape"], w["dtype"] = m["kv"]["layers"][0], [5 * 2 * 4 * 2 * 32], "float32"
    _refused(tmp_path, edit, "already used")


def test_duplicate_weight_names(tmp_path):
    def edit(m):
        m["weights"][1]["name"] = m["weights"][0]["name"]
    _refused(tmp_path, edit, "appears twice")


@pytest.mark.parametrize("edit_weights", [
    lambda m: m["identity"].update(weights_digest="0" * 64),   # a digest that names other weights
    lambda m: m["identity"].update(weights_digest=""),         # weights, but no digest
    lambda m: m["weights"][0].update(dtype="int32"),          # same bytes, read as another type
    lambda m: m["weights"][0].update(shape=[16, 8]),          # same bytes, another shape
], ids=["other-digest", "empty-digest", "retyped", "reshaped"])
def test_weights_digest_is_rechecked_against_the_weights(tmp_path, edit_weights):
    _refused(tmp_path, edit_weights, "weights_digest .* is not the digest of the")


def test_num_layers_beyond_the_kv_layers(tmp_path):
    def edit(m):
        m["identity"]["num_layers"] = 3
    _refused(tmp_path, edit, "num_layers 3")


@pytest.mark.parametrize("field,value,match", [
    ("tp_rank", 1, "tp_rank 1 must be below tp_size 1"),
    ("tp_size", 0, "tp_size"),
    ("dtype", 7, "dtype must be a string"),
    ("extra", [], "extra must be a JSON object"),
])
def test_identity_field_types_and_ranges(tmp_path, field, value, match):
    def edit(m):
        m["identity"][field] = value
    _refused(tmp_path, edit, match)


@pytest.mark.parametrize("field,value,match", [
    ("pages", [0.5], "pages must be a list of non-negative integers"),
    ("pages", [True], "pages must be a list"),
    ("prompt_token_ids", "1 2 3", "prompt_token_ids must be a list"),
    ("request_id", 5, "request_id must be a string"),
    ("num_computed_tokens", 2.0, "num_computed_tokens must be an integer"),
])
def test_request_field_types(tmp_path, field, value, match):
    def edit(m):
        m["requests"][0][field] = value
    _refused(tmp_path, edit, match)


def test_duplicate_request_ids(tmp_path):
    def edit(m):
        m["requests"].append(dict(m["requests"][0]))
    _refused(tmp_path, edit, "appears twice")


@pytest.mark.parametrize("field,value", [("page_size", 4.9), ("head_dim", True), ("num_kv_heads", "2")])
def test_layout_fields_are_integers_not_truncated(tmp_path, field, value):
    def edit(m):
        m["kv"]["layout"][field] = value
    _refused(tmp_path, edit, "must be a positive integer")


def test_huge_page_refused_without_allocating(tmp_path):
    def edit(m):
        m["kv"]["layout"]["page_size"] = 1 << 26
    _refused(tmp_path, edit, "larger than")


def test_duplicate_sibling_nodes_refused():
    from thaw.core import PrefixTree, SchemaError

    tree = PrefixTree(2)
    tree.add(-1, [5, 6], [0])
    tree.add(-1, [5, 6], [1])
    with pytest.raises(SchemaError, match="same tokens as sibling node 0"):
        tree.validate(2)
    other = PrefixTree(2)
    other.add(-1, [5, 6], [0])
    other.add(-1, [5, 7], [1])  # differs inside the first page: fine
    other.add(-1, [5, 6], [2], "cache_salt:x")  # another namespace: fine
    other.validate(3)


# -- fuzzing the header, past the checksums --------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


def _leaf_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _leaf_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _leaf_paths(v, prefix + (i,))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("pristine")
    src = d / "src.thaw"
    thaw.save(small_snapshot(), src)
    c = Container(src)
    return {"meta": json.loads(json.dumps(c.meta)), "sections": [s.to_json() for s in c.sections.values()],
            "body": src.read_bytes()[c.data_start:], "hlen": c.data_start - 32, "dir": d}


@settings(max_examples=int(os.environ.get("THAW_FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_edited_headers_load_or_raise_a_typed_error(pristine, data):
    """Any one field of the header replaced by any JSON value: the file loads and every
    tensor reads, or a ThawError is raised; never another exception."""
    meta = json.loads(json.dumps(pristine["meta"]))
    paths = sorted(_leaf_paths(meta), key=repr)
    where = data.draw(st.sampled_from(paths))
    value = data.draw(JSON_VALUES)
    holder = meta
    for key in where[:-1]:
        holder = holder[key]
    holder[where[-1]] = value
    text = json.dumps({"meta": meta, "sections": pristine["sections"]})
    if len(text) + 32 > pristine["hlen"] + 32:  # must fit the original header region
        return
    path = pristine["dir"] / "fuzzed.thaw"
    forge(path, {"meta": meta, "sections": pristine["sections"]}, pristine["body"], hlen=pristine["hlen"])
    try:
        snap = thaw.load(path)
        for t in [*snap.weights.values(), *snap.extra_tensors.values(), *(snap.kv.layers if snap.kv else [])]:
            t.tensor()
    except thaw.ThawError:
        pass


def _forged_text(tmp_path, edit_text):
    """The small snapshot with its header JSON text edited (CRCs recomputed)."""
    import struct

    import crc32c

    src = tmp_path / "src.thaw"
    thaw.save(small_snapshot(), src)
    c = Container(src)
    text = edit_text(json.dumps({"meta": c.meta, "sections": [s.to_json() for s in c.sections.values()]}))
    hlen = c.data_start - 32
    raw = text.encode() + b" " * (hlen - len(text.encode()))
    head = struct.pack("<8sIIQI", b"THAWSNAP", 1, 0, hlen, crc32c.crc32c(raw))
    out = tmp_path / "text.thaw"
    out.write_bytes(head + struct.pack("<I", crc32c.crc32c(head)) + raw + src.read_bytes()[c.data_start:])
    return out


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.replace('"note": "test"', '"note": 1e400'), "infinity"),
    (lambda t: t.replace('"request_id": "r0"', '"request_id": "r\\ud800"'), "lone surrogate"),
    (lambda t: t.replace('"note": "test"', '"note": ' + "[" * 100 + "]" * 100), "nested deeper"),
])
def test_header_values_no_writer_can_write_back_are_refused(tmp_path, edit, match):
    path = _forged_text(tmp_path, edit)
    with pytest.raises(thaw.FormatError, match=match):
        thaw.load(path)


@pytest.mark.parametrize("place,value,match", [
    ("extras", {1: "a", "b": 2}, "extras: key 1 must be a string"),
    ("extras", {"x": float("nan")}, "extras.x: nan is not a finite number"),
    ("extras", {"x": object()}, "extras.x: a object is not a JSON value"),
    ("extras", {"x": "\ud800"}, "extras.x: string .*lone surrogate"),
    ("identity", {2: 0}, "identity.extra: key 2 must be a string"),
    ("sampling", {3: 1.0}, "sampling: key 3 must be a string"),
    ("request_id", "r\udfff", "request id: string .*lone surrogate"),
    ("extras", {"deep": __import__("functools").reduce(lambda v, _: [v], range(80), 0)}, "nested deeper"),
])
def test_save_refuses_metadata_that_would_not_read_back(tmp_path, place, value, match):
    """Metadata is written as JSON: what JSON cannot hold as given (or would silently turn
    into something else, like int keys into strings) is refused before a byte is written."""
    snap = small_snapshot()
    if place == "extras":
        snap.extras = value
    elif place == "identity":
        snap.identity.extra = value
    elif place == "sampling":
        snap.requests[0].sampling = value
    else:
        snap.requests[0].request_id = value
    with pytest.raises(thaw.SchemaError, match=match):
        thaw.save(snap, tmp_path / "s.thaw")
    assert not list(tmp_path.iterdir())


def test_metadata_as_deep_as_a_header_allows_saves_and_loads_back(tmp_path):
    """Save counts nesting where the value sits in the header, as the loader does: the
    deepest extras the loader reads back are accepted, one level more is refused at save."""
    import functools

    deepest = 64 - 3  # header -> meta -> extras -> "d" -> the nested lists
    snap = small_snapshot()
    snap.extras = {"d": functools.reduce(lambda v, _: [v], range(deepest), 0)}
    thaw.save(snap, tmp_path / "deep.thaw")
    assert thaw.load(tmp_path / "deep.thaw").extras == snap.extras
    snap.extras = {"d": [snap.extras["d"]]}
    with pytest.raises(thaw.SchemaError, match="nested deeper"):
        thaw.save(snap, tmp_path / "deeper.thaw")
