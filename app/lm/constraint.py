"""Regex-constrained decoding: a pattern compiled once into a DFA over a vocabulary's ids, kept as lookup tables."""

from __future__ import annotations

import dataclasses
import heapq
import re
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import interegular
import interegular.fsm
import numpy as np
from interegular.patterns import Pattern, REFlags, _CharGroup, _Concatenation, _Repeated

from app.lm.vocab import Vocab

MAX_PATTERN_CHARS = 1000
# interegular's parser spells out every code point of a class range ([a-z] is 26 set members), so a
# wide range costs time before any state exists; this admits CJK Unified Ideographs and Extension A
MAX_CLASS_CHARS = 100_000
MAX_STATES = 5_000  # states interegular may expand while building, summed over all its steps
MAX_WORK = 500_000  # substates it may visit following transitions, plus symbols it may re-key, summed likewise
CACHE_SIZE = 64  # compiled (pattern, vocabulary) pairs kept; failures are kept too


class RegexError(ValueError):
    """A pattern that cannot constrain this model: malformed, unsupported, too large or unmatchable."""


@dataclass(frozen=True, eq=False)
class CharAutomaton:
    """A pattern's DFA over one vocabulary: a row per state, a column per id.

    Only live states are kept (a full match is still reachable with vocabulary characters), so
    `allowed[s]` is exactly the ids that keep the text a prefix of some match, and a state with
    nothing allowed is final. The tables are read-only and shared by every request that uses the
    same pattern and vocabulary.
    """

    pattern: str
    initial: int  # always 0: states are numbered breadth-first from it
    next_state: np.ndarray  # (S, V) int32: the state after appending an id; -1 where it is not allowed
    allowed: np.ndarray  # (S, V) bool: next_state >= 0; the UNK column is always False
    final: np.ndarray  # (S,) bool: the text so far is a full match
    dead: np.ndarray  # (S,) bool: a full match that nothing can continue (generation ends there)

    @property
    def num_states(self) -> int:
        return self.next_state.shape[0]

    def walk(self, ids: Iterable[int], state: int | None = None) -> int:
        """The state after appending `ids` (from `state`, default initial); -1 once one is not allowed."""
        s = self.initial if state is None else state
        for i in ids:
            if s < 0:
                break
            s = int(self.next_state[s, i])
        return s


def compile_regex(pattern: str, vocab: Vocab) -> CharAutomaton:
    """Compiles `pattern` for `vocab`'s characters; the whole generated text must match it.

    Python `re` syntax as far as interegular models it: literals and escapes, classes (negated,
    ranges, \\d \\w \\s and their negations), `.`, groups (capturing, (?:...), named), alternation,
    greedy and lazy quantifiers (lazy ones accept the same texts), and the flags i and s. Anchors
    are implicit: a leading ^ or \\A and a trailing $ or \\Z are dropped; anywhere else they are
    unsupported, as are backreferences, lookarounds, atomic groups, possessive quantifiers, \\b \\B,
    and the flags a, L, m, u, x. Where interegular differs from `re`: \\d \\w \\s are ASCII only (as
    under re.ASCII), and the i flag pairs only str.lower() and str.upper() of each character. `.`
    matches any character but a newline (any at all under (?s)), and a negated class any character
    outside it, vocabulary characters the pattern never mentions included.

    Raises RegexError with a one-line reason. Results (failures too) are cached per pattern and
    vocabulary, so a repeated request costs a dictionary lookup.
    """
    result = _compile(pattern, tuple(vocab.index_order()))
    if isinstance(result, str):
        raise RegexError(result)
    return result


@lru_cache(maxsize=CACHE_SIZE)
def _compile(pattern: str, chars: tuple[str | None, ...]) -> CharAutomaton | str:
    # a failure is cached as its message: a new exception per call, as threads may raise it at once
    try:
        return _build(pattern, chars)
    except RegexError as exc:
        return str(exc)


def _build(pattern: str, chars: tuple[str | None, ...]) -> CharAutomaton:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexError(f"pattern too long: {len(pattern)} characters, at most {MAX_PATTERN_CHARS}")
    try:
        # re is the reference for what is well-formed (interegular accepts some malformed patterns)
        # and gives better messages
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise RegexError(f"malformed pattern: {exc}") from None
    fsm, cut = _interegular_fsm(_prepare(_strip_anchors(pattern)), frozenset(c for c in chars if c is not None))
    return _tables(pattern, fsm, chars, cut)


def _strip_anchors(pattern: str) -> str:
    if pattern.startswith("^"):
        pattern = pattern[1:]
    elif pattern.startswith("\\A"):
        pattern = pattern[2:]
    for anchor in ("$", "\\Z"):
        body = pattern[: -len(anchor)]
        # an odd run of backslashes before it escapes its first character: \$ is a dollar sign
        if pattern.endswith(anchor) and (len(body) - len(body.rstrip("\\"))) % 2 == 0:
            return body
    return pattern


_QUANTIFIER = re.compile(r"[*+?]|\{(?:\d+|\d*,\d*)\}")
_CLASS_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|([0-7]{1,3})|(.))", re.DOTALL)
_CONTROL_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}


def _prepare(pattern: str) -> str:
    """Rejects what interegular would read differently from `re` or build too slowly; returns what it should parse.

    The pattern is one `re` has accepted, so the scan needs no error handling of its own.
    """
    out: list[str] = []
    span = 0  # code points spelled out by class ranges
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
        elif c == "[":
            i, text, width = _char_class(pattern, i)
            out.append(text)
            span += width
        elif pattern.startswith("(?", i):
            kind = pattern[i + 2 : i + 4]
            # interegular accepts some lookaheads but misreads them once quantified
            if kind[:1] in ("=", "!") or kind in ("<=", "<!"):
                raise RegexError("unsupported: lookarounds (?=...) (?!...) (?<=...) (?<!...)")
            if kind[:1] == ">":
                raise RegexError("unsupported: atomic groups (?>...)")
            if kind[:1] == "#":  # a comment may hold a '[' or '(' that opens nothing
                i = pattern.index(")", i) + 1
                continue
            out.append("(?")
            i += 2
        elif m := _QUANTIFIER.match(pattern, i):
            j = m.end()
            if pattern.startswith("+", j):  # interegular would read a*+ as (a*)+
                raise RegexError("unsupported: possessive quantifiers *+ ++ ?+ {m,n}+")
            if pattern.startswith("?", j):
                j += 1
            out.append(pattern[i:j])
            i = j
        else:
            out.append(c)
            i += 1
    if span > MAX_CLASS_CHARS:
        raise RegexError(f"character classes too large: their ranges span {span} characters, at most {MAX_CLASS_CHARS}")
    return "".join(out)


def _char_class(pattern: str, i: int) -> tuple[int, str, int]:
    """The class opening at pattern[i]: (index after it, its text for interegular, code points its ranges span)."""
    j = i + 1
    head = "["
    if pattern.startswith("^", j):
        head += "^"
        j += 1
    start = j
    span = 0
    while j == start or pattern[j] != "]":  # a ']' first is a literal to re
        low, j = _class_point(pattern, j)
        if pattern.startswith("-", j) and pattern[j + 1] != "]":
            high, j = _class_point(pattern, j + 1)
            if low is not None and high is not None:
                span += high - low + 1
    body = pattern[start:j]
    if body.startswith("]"):  # interegular would read it as the end of an empty class
        body = "\\" + body
    return j + 1, head + body + "]", span


def _class_point(pattern: str, j: int) -> tuple[int | None, int]:
    """The code point of the class member at pattern[j] (None for \\d and the like) and the index after it."""
    if pattern[j] != "\\":
        return ord(pattern[j]), j + 1
    m = _CLASS_ESCAPE.match(pattern, j)
    assert m is not None  # re has accepted the pattern
    hex_digits, octal, char = m.groups()
    if hex_digits:
        return int(hex_digits, 16), m.end()
    if octal:
        return int(octal, 8), m.end()
    if char.isalpha():
        # \u \U \N are refused by interegular before it spells out a range; \d \w \s are not points
        return _CONTROL_ESCAPES.get(char), m.end()
    return ord(char), m.end()


class _TooLarge(Exception):
    pass


class _Budget:
    """Counts interegular's work while it builds one automaton, and stops it past the limits."""

    def __init__(self) -> None:
        self.states = 0
        self.work = 0

    def charge(self, states: int, work: int) -> None:
        self.states += states
        self.work += work
        if self.states > MAX_STATES:
            raise _TooLarge(f"pattern too complex: its automaton needs more than {MAX_STATES} states to build")
        if self.work > MAX_WORK:
            raise _TooLarge(f"pattern too complex: its automaton needs more than {MAX_WORK} steps to build")


_local = threading.local()  # .budget: the _Budget of the build running on this thread, if any
_interegular_crawl = getattr(interegular.fsm.crawl, "__wrapped__", interegular.fsm.crawl)


def _budgeted_crawl(alphabet, initial, final, follow):
    """interegular.fsm.crawl, the one loop behind every FSM operation, with a work budget.

    An Alphabet subclass passed to to_fsm() cannot do the counting: union and concatenation build
    fresh plain Alphabets, so (a|b)*a(a|b){30} would run unbounded. The loop is the original's, state
    for state, but finds known states by hash where the original's list.index() is quadratic.
    Without a budget on this thread (any other user of interegular) the original runs.
    """
    budget: _Budget | None = getattr(_local, "budget", None)
    if budget is None:
        return _interegular_crawl(alphabet, initial, final, follow)
    transitions = list(alphabet.by_transition)
    budget.charge(0, len(alphabet))  # the alphabet merge that preceded this call cost as much
    states = [initial]
    index = {_state_key(initial): 0}
    finals = set()
    transition_map: dict[int, dict] = {}
    i = 0
    while i < len(states):
        state = states[i]
        if final(state):
            finals.add(i)
        row = transition_map[i] = {}
        size = _size(state)
        work = 0  # follow() walks every substate of `state` and builds the target's
        for transition in transitions:
            work += size
            try:
                target = follow(state, transition)
            except interegular.fsm.OblivionError:
                continue
            work += _size(target)
            key = _state_key(target)
            j = index.get(key)
            if j is None:
                j = index[key] = len(states)
                states.append(target)
            row[transition] = j
        budget.charge(1, work)
        i += 1
    return interegular.FSM(
        alphabet=alphabet,
        states=range(len(states)),
        initial=0,
        finals=finals,
        map=transition_map,
        __no_validation__=True,
    )


def _size(state) -> int:
    return len(state) if isinstance(state, (set, frozenset, dict)) else 1


def _state_key(state):
    # crawl's meta-states are sets of substates or dicts from sub-FSM to its state; list.index()
    # compares them by value, as these keys do
    if isinstance(state, dict):
        return frozenset(state.items())
    return frozenset(state) if isinstance(state, set) else state


_budgeted_crawl.__wrapped__ = _interegular_crawl  # type: ignore[attr-defined]
interegular.fsm.crawl = _budgeted_crawl  # FSM's methods look crawl up in their module at each call


def _interegular_fsm(pattern: str, vocabulary: frozenset[str]) -> tuple[interegular.FSM, list[str]]:
    """interegular's DFA for the pattern with its classes cut down to `vocabulary`, and the first characters cut."""
    _local.budget = _Budget()
    try:
        parsed, dropped = _restricted(interegular.parse_pattern(pattern), vocabulary)
        # prefix_postfix (0, 0): no lookaround may reach past the text (none gets here anyway)
        return parsed.to_fsm(prefix_postfix=(0, 0)), sorted(dropped)[:10]
    except (interegular.InvalidSyntax, interegular.Unsupported) as exc:
        raise RegexError(f"unsupported pattern: {_reason(exc)}") from None
    except RecursionError:
        raise RegexError("pattern nested too deeply") from None
    except _TooLarge as exc:
        raise RegexError(str(exc)) from None
    finally:
        _local.budget = None


def _restricted(node, vocabulary: frozenset[str], insensitive: bool = False) -> tuple:
    """The parsed pattern with each class keeping only characters that can match a vocabulary one.

    The language over the vocabulary is unchanged (a negated class still excludes every vocabulary
    character it named), but the alphabet interegular merges at every step shrinks from all the
    code points the classes name (20,992 for [一-鿿]) to about the vocabulary's size.
    Returns the node and a few of the characters cut from non-negated classes.
    """
    if isinstance(node, _CharGroup):
        if insensitive:  # interegular then matches lower() and upper() of each member
            kept = frozenset(c for c in node.chars if {c, c.lower(), c.upper()} & vocabulary)
        else:
            kept = node.chars & vocabulary
        dropped = set() if node.negated else set(heapq.nsmallest(10, node.chars - kept))
        return (node if len(kept) == len(node.chars) else _CharGroup(kept, node.negated)), dropped
    if isinstance(node, Pattern):
        if node.added_flags & REFlags.I:
            insensitive = True
        if node.removed_flags & REFlags.I:
            insensitive = False
        pairs = [_restricted(option, vocabulary, insensitive) for option in node.options]
        return dataclasses.replace(node, options=tuple(n for n, _ in pairs)), set().union(*(d for _, d in pairs))
    if isinstance(node, _Concatenation):
        pairs = [_restricted(part, vocabulary, insensitive) for part in node.parts]
        return dataclasses.replace(node, parts=tuple(n for n, _ in pairs)), set().union(*(d for _, d in pairs))
    if isinstance(node, _Repeated):
        base, dropped = _restricted(node.base, vocabulary, insensitive)
        return dataclasses.replace(node, base=base), dropped
    return node, set()  # . and the empty pattern name no characters


_REASONS = {  # interegular's messages that would not tell a user what to change
    "'^'": "^ and $ only at the very start and end (the whole text must match anyway)",
    "'$'": "^ and $ only at the very start and end (the whole text must match anyway)",
    "REFlags.MULTILINE": "flag m is not implemented",
    "regex module unicode properties are not supported.": "escapes \\u \\U \\N \\p \\P are not implemented",
}


def _reason(exc: Exception) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else ""
    return _REASONS.get(reason, reason) or f"{type(exc).__name__} (syntax interegular does not read)"


def _tables(pattern: str, fsm: interegular.FSM, chars: tuple[str | None, ...], cut: list[str]) -> CharAutomaton:
    """The vocabulary-restricted DFA: dead and unreachable states dropped, states renumbered breadth-first."""
    states = sorted(fsm.states)
    number = {s: k for k, s in enumerate(states)}
    columns = defaultdict(list)  # transition key -> the ids it covers
    for col, char in enumerate(chars):
        # alphabet[char] falls back to the anything_else key for characters the pattern never names
        key = fsm.alphabet[char] if char is not None else None
        if key is not None:
            columns[key].append(col)
    raw = np.full((len(states), len(chars)), -1, np.int64)  # (S0, V): over all of interegular's states
    for s, row in fsm.map.items():
        for key, target in row.items():
            if cols := columns.get(key):
                raw[number[s], cols] = number[target]
    final = np.zeros(len(states), bool)
    final[[number[s] for s in fsm.finals]] = True

    live = _reaches(raw, final)
    if not live[number[fsm.initial]]:
        lacks = f" (it lacks {', '.join(map(repr, cut))}{', ...' if len(cut) == 10 else ''})" if cut else ""
        raise RegexError(f"pattern cannot be matched with this model's characters{lacks}")
    order = _breadth_first(raw, live, number[fsm.initial])
    renumber = np.full(len(states), -1, np.int64)
    renumber[order] = np.arange(len(order))
    kept = raw[order]
    next_state = np.where(kept >= 0, renumber[np.maximum(kept, 0)], -1).astype(np.int32)  # dead targets -> -1
    allowed = next_state >= 0
    final = final[order]
    dead = final & ~allowed.any(axis=1)
    for array in (next_state, allowed, final, dead):
        array.setflags(write=False)
    return CharAutomaton(pattern=pattern, initial=0, next_state=next_state, allowed=allowed, final=final, dead=dead)


def _reaches(raw: np.ndarray, final: np.ndarray) -> np.ndarray:
    """(S0,) bool: the states from which some final state can be reached."""
    sources, _ = np.nonzero(raw >= 0)
    targets = raw[raw >= 0]
    by_target = np.argsort(targets, kind="stable")
    sources, starts = sources[by_target], np.searchsorted(targets[by_target], np.arange(len(final) + 1))
    live = final.copy()
    stack = list(np.flatnonzero(final))
    while stack:
        t = stack.pop()
        preds = sources[starts[t] : starts[t + 1]]
        new = np.unique(preds[~live[preds]])
        live[new] = True
        stack.extend(new.tolist())
    return live


def _breadth_first(raw: np.ndarray, live: np.ndarray, initial: int) -> np.ndarray:
    """The live states reachable from `initial`, in breadth-first order."""
    seen = np.zeros(len(live), bool)
    seen[initial] = True
    order = [initial]
    k = 0
    while k < len(order):
        row = raw[order[k]]
        targets = np.unique(row[row >= 0])
        new = targets[live[targets] & ~seen[targets]]
        seen[new] = True
        order.extend(new.tolist())
        k += 1
    return np.array(order, np.int64)
