"""Regex constraints: the tables allow exactly the characters that keep the text a prefix of a full match."""

import itertools
import random
import re
import string
import threading
import time

import interegular
import numpy as np
import pytest

from app.lm.constraint import CharAutomaton, RegexError, compile_regex
from app.lm.vocab import UNK_INDEX, Vocab

TEXT_VOCAB = Vocab.from_text(string.ascii_letters + string.digits + " -.,\n")  # 68 ids, UNK included
DIGITS = set(string.digits)
LOWER = set(string.ascii_lowercase)
UPPER = set(string.ascii_uppercase)


def allowed_chars(automaton: CharAutomaton, vocab: Vocab, state: int) -> set[str]:
    return {vocab.id_to_char(i) for i in np.flatnonzero(automaton.allowed[state])}


def walk(automaton: CharAutomaton, vocab: Vocab, text: str) -> int:
    return automaton.walk(vocab.encode(text))


def accepts(automaton: CharAutomaton, vocab: Vocab, text: str) -> bool:
    state = walk(automaton, vocab, text)
    return state >= 0 and bool(automaton.final[state])


def completion(automaton: CharAutomaton, vocab: Vocab, state: int) -> str:
    """A shortest text that takes `state` to a final state (breadth-first over the tables)."""
    paths = {state: ""}
    frontier = [state]
    while frontier:
        for s in frontier:
            if automaton.final[s]:
                return paths[s]
        following = []
        for s in frontier:
            for i in np.flatnonzero(automaton.allowed[s]):
                t = int(automaton.next_state[s, i])
                if t not in paths:
                    paths[t] = paths[s] + vocab.id_to_char(i)
                    following.append(t)
        frontier = following
    raise AssertionError(f"state {state} is dead")


def test_tables_have_the_documented_shapes_and_invariants():
    a = compile_regex("[A-Z][a-z]+( [A-Z][a-z]+)?", TEXT_VOCAB)
    s, v = a.num_states, TEXT_VOCAB.size
    assert a.next_state.shape == (s, v) and a.next_state.dtype == np.int32
    assert a.allowed.shape == (s, v) and a.allowed.dtype == bool
    assert a.final.shape == (s,) and a.final.dtype == bool
    assert a.initial == 0
    assert np.array_equal(a.allowed, a.next_state >= 0)
    assert not a.allowed[:, UNK_INDEX].any()
    assert a.final[~a.allowed.any(axis=1)].all()  # a state with nothing allowed is a complete match
    assert a.next_state.max() < s
    with pytest.raises(ValueError):  # shared between requests: read-only
        a.allowed[0, 1] = True


def test_a_date_allows_digits_and_dashes_in_place_and_is_final_after_ten_characters():
    a = compile_regex("[0-9]{4}-[0-9]{2}-[0-9]{2}", TEXT_VOCAB)
    text = "2024-01-15"
    state = a.initial
    for position, char in enumerate(text):
        assert allowed_chars(a, TEXT_VOCAB, state) == ({"-"} if position in (4, 7) else DIGITS)
        assert not a.final[state]
        state = int(a.next_state[state, TEXT_VOCAB.encode(char)[0]])
    assert a.final[state] and not a.allowed[state].any()
    assert walk(a, TEXT_VOCAB, "2024-1") >= 0 and walk(a, TEXT_VOCAB, "2024-1-") == -1
    assert a.num_states == 11  # one per position


def test_a_choice_narrows_after_each_character():
    a = compile_regex("(yes|no|maybe)", TEXT_VOCAB)
    assert allowed_chars(a, TEXT_VOCAB, a.initial) == {"y", "n", "m"}
    assert allowed_chars(a, TEXT_VOCAB, walk(a, TEXT_VOCAB, "m")) == {"a"}
    yes = walk(a, TEXT_VOCAB, "yes")
    assert a.final[yes] and allowed_chars(a, TEXT_VOCAB, yes) == set()
    assert not a.final[walk(a, TEXT_VOCAB, "may")]
    assert walk(a, TEXT_VOCAB, "ye s") == -1


def test_a_final_state_can_still_continue():
    a = compile_regex("[A-Z][a-z]+( [A-Z][a-z]+)?", TEXT_VOCAB)
    assert allowed_chars(a, TEXT_VOCAB, a.initial) == UPPER
    ada = walk(a, TEXT_VOCAB, "Ada")
    assert a.final[ada] and allowed_chars(a, TEXT_VOCAB, ada) == LOWER | {" "}
    space = walk(a, TEXT_VOCAB, "Ada ")
    assert not a.final[space] and allowed_chars(a, TEXT_VOCAB, space) == UPPER
    full = walk(a, TEXT_VOCAB, "Ada Lovelace")
    assert a.final[full] and allowed_chars(a, TEXT_VOCAB, full) == LOWER  # no second space


def test_negated_classes_and_dot_cover_characters_the_pattern_never_names():
    everything = set(TEXT_VOCAB.chars)
    not_a = compile_regex("[^a]+", TEXT_VOCAB)
    assert allowed_chars(not_a, TEXT_VOCAB, not_a.initial) == everything - {"a"}
    assert allowed_chars(not_a, TEXT_VOCAB, walk(not_a, TEXT_VOCAB, "Z9 \n")) == everything - {"a"}
    not_digit = compile_regex("[^0-9]", TEXT_VOCAB)
    assert allowed_chars(not_digit, TEXT_VOCAB, not_digit.initial) == everything - DIGITS
    dot = compile_regex(".+", TEXT_VOCAB)  # as in re: any character but a newline
    assert allowed_chars(dot, TEXT_VOCAB, dot.initial) == everything - {"\n"}
    dotall = compile_regex("(?s).+", TEXT_VOCAB)
    assert allowed_chars(dotall, TEXT_VOCAB, dotall.initial) == everything
    mixed = compile_regex("x.", TEXT_VOCAB)  # x named, the rest reached through anything_else
    assert allowed_chars(mixed, TEXT_VOCAB, walk(mixed, TEXT_VOCAB, "x")) == everything - {"\n"}


def test_classes_flags_and_anchors_read_as_re_reads_them():
    vocab = Vocab.from_text("ab]$-xX")
    bracket = compile_regex("[]a]+", vocab)  # a ']' first is a member, as in re
    assert allowed_chars(bracket, vocab, bracket.initial) == {"]", "a"}
    insensitive = compile_regex("(?i)x+", vocab)
    assert allowed_chars(insensitive, vocab, insensitive.initial) == {"x", "X"}
    anchored = compile_regex("^ab$", vocab)
    assert accepts(anchored, vocab, "ab") and not accepts(anchored, vocab, "a")
    dollar = compile_regex(r"a\$", vocab)  # an escaped $ is a character
    assert accepts(dollar, vocab, "a$")
    empty = compile_regex("", vocab)
    assert empty.final[empty.initial] and not empty.allowed[empty.initial].any()


def test_characters_the_vocabulary_lacks_prune_what_needs_them():
    vocab = Vocab.from_text("abc")
    a = compile_regex("(ab|cd)x?", vocab)  # d and x are missing: c leads nowhere
    assert allowed_chars(a, vocab, a.initial) == {"a"}
    assert a.final[walk(a, vocab, "ab")] and not a.allowed[walk(a, vocab, "ab")].any()
    with pytest.raises(RegexError, match="cannot be matched with this model's characters.*'0'"):
        compile_regex("[0-9]+", vocab)
    with pytest.raises(RegexError, match="cannot be matched"):
        compile_regex("abd", vocab)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(", "malformed pattern: missing \\)"),
        ("a**", "malformed pattern: multiple repeat"),
        ("[z-a]", "malformed pattern: bad character range"),
        ("a{3,2}", "malformed pattern"),
        (r"(a)\1", "unsupported"),
        ("(?=a)a", "unsupported: lookarounds"),
        ("(?<=a)b", "unsupported: lookarounds"),
        ("a*+", "unsupported: possessive"),
        ("(?>a)", "unsupported: atomic"),
        (r"a\b", "unsupported"),
        ("a$b", r"unsupported pattern: \^ and \$ only at the very start and end"),
        ("x" * 1001, "pattern too long: 1001 characters"),
    ],
)
def test_malformed_and_unsupported_patterns_say_why(pattern, reason):
    with pytest.raises(RegexError, match=reason) as info:
        compile_regex(pattern, TEXT_VOCAB)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "pattern",
    [
        "(a|b)*a(a|b){30}",  # 2^31 DFA states
        "a{100000}",
        "(ab){100000}",
        "((a{1000}){1000}){1000}",
        ".*a.*b.*c.*d.*e.*f.*g.*h.*i.*j.*k.*l.*m.*n.*o.*p.*q.*r.*s.*t.*u.*v.*w.*x.*y.*z",
        "(" + "|".join(string.ascii_letters + string.digits) + ")*a(" + "|".join(string.ascii_letters) + "){12}",
        "[\x00-\U0010ffff]",  # spelt out, a million class members
        "(" * 300 + ")" * 300,
    ],
)
def test_huge_patterns_fail_fast(pattern):
    start = time.monotonic()
    with pytest.raises(RegexError, match="too complex|too large|nested too deeply"):
        compile_regex(pattern, TEXT_VOCAB)
    assert time.monotonic() - start < 2.0


def test_a_wide_class_is_cut_to_the_vocabulary():
    vocab = Vocab.from_text("一二三 ab")
    start = time.monotonic()
    a = compile_regex("[一-鿿]+( [一-鿿]+)*", vocab)  # 20,992 code points, three of them known
    assert time.monotonic() - start < 2.0
    assert allowed_chars(a, vocab, a.initial) == {"一", "二", "三"}


def test_compiled_once_per_pattern_and_vocabulary():
    a = compile_regex("[a-z]+-[0-9]", TEXT_VOCAB)
    assert compile_regex("[a-z]+-[0-9]", Vocab(list(TEXT_VOCAB.chars))) is a  # equal vocabulary, same tables
    other = compile_regex("[a-z]+-[0-9]", Vocab.from_text("abc-0"))
    assert other is not a and other.allowed.shape[1] == 6
    for _ in range(2):  # failures are cached too, and raised afresh each time
        with pytest.raises(RegexError, match="too complex"):
            compile_regex("a{100000}", TEXT_VOCAB)


def test_concurrent_compiles_each_get_their_own_budget():
    patterns = [f"[a-z]{{{n}}}-x" for n in range(1, 9)] + ["a{100000}", "(a|b)*a(a|b){30}"]
    results: dict[str, object] = {}

    def compile_one(pattern: str) -> None:
        try:
            results[pattern] = compile_regex(pattern, TEXT_VOCAB).num_states
        except RegexError as exc:
            results[pattern] = str(exc)

    threads = [threading.Thread(target=compile_one, args=(p,)) for p in patterns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(1, 9):
        assert results[f"[a-z]{{{n}}}-x"] == n + 3
    assert "too complex" in results["a{100000}"] and "too complex" in results["(a|b)*a(a|b){30}"]


def test_other_users_of_interegular_are_unaffected():
    fsm = interegular.parse_pattern("(a|b)*c").to_fsm()
    assert fsm.accepts("abac") and not fsm.accepts("aba")


RANDOM_PATTERNS = [
    "a*b",
    "(ab|b)*a?",
    "[ab]{2,3}-?",
    "(a|-)+b{0,2}",
    "[^a]*a",
    ".(a|b-)*",
    "(a+|b+)-(a+|b+)",
    "a?b?-?a?b?",
    "(?i)A(B|-)*",
    r"[\]ab]+\]?",
    "(a|ab)(c|bcd)?",
]


@pytest.mark.parametrize("pattern", RANDOM_PATTERNS)
def test_walking_agrees_with_re_fullmatch_and_prefixes(pattern):
    vocab = Vocab.from_text("ab-]\nz")  # z and ] are characters most patterns never name
    a = compile_regex(pattern, vocab)
    compiled = re.compile(pattern)
    chars = "".join(vocab.chars)
    rng = random.Random(pattern)
    texts = ["".join(t) for n in range(4) for t in itertools.product(chars, repeat=n)]
    texts += ["".join(rng.choice(chars) for _ in range(rng.randint(4, 10))) for _ in range(300)]
    extensions = ["".join(t) for n in range(4) for t in itertools.product(chars, repeat=n)]
    for text in texts:
        state = walk(a, vocab, text)
        assert (state >= 0 and bool(a.final[state])) == bool(compiled.fullmatch(text)), text
        if state >= 0:  # a live prefix: some completion matches
            assert compiled.fullmatch(text + completion(a, vocab, state)), text
        else:  # a dead one: nothing short completes it
            assert not any(compiled.fullmatch(text + e) for e in extensions), text
