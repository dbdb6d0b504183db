from app.lm.vocab import UNK_INDEX, Vocab


def test_ids_are_sorted_and_unk_is_reserved():
    v = Vocab.from_text("hey how are you")
    assert v.unk_index == UNK_INDEX == 0
    assert v.index_order() == [None, " ", "a", "e", "h", "o", "r", "u", "w", "y"]
    assert v.size == 10


def test_encoding_never_fails_and_unseen_chars_are_unk():
    v = Vocab.from_text("abc")
    assert v.encode("a😀c\udcff\x00") == [1, 0, 3, 0, 0]
    assert v.unknown_chars("xax😀") == ["x", "😀"]


def test_decoding_never_produces_unk():
    v = Vocab.from_text("abc")
    assert v.decode([1, 0, 2, 0, 3]) == "abc"
    assert v.decode(v.encode("cab")) == "cab"


def test_min_count_maps_rare_characters_to_unk():
    v = Vocab.from_text("aaabbc", min_count=2)
    assert v.chars == ["a", "b"]
    assert v.encode("c") == [UNK_INDEX]


def test_json_round_trip():
    v = Vocab.from_text("hello world")
    assert Vocab.from_json(v.to_json()) == v
