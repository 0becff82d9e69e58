"""Gateway tokens: format, checksum, hashing."""

from __future__ import annotations

from gateway import tokens


def test_generated_tokens_are_well_formed_and_distinct() -> None:
    made = {tokens.generate() for _ in range(200)}
    assert len(made) == 200
    for t in made:
        assert t.startswith("shk_") and len(t) == tokens.TOKEN_LEN
        assert tokens.well_formed(t)


def test_a_typo_fails_the_checksum() -> None:
    t = tokens.generate()
    i = len(tokens.PREFIX) + 5
    typo = t[:i] + ("A" if t[i] != "A" else "B") + t[i + 1 :]
    assert not tokens.well_formed(typo)
    assert not tokens.well_formed(t[:-1])
    assert not tokens.well_formed("sk-" + t[3:])
    assert not tokens.well_formed(t[:-3] + "é!x")
    assert not tokens.well_formed("")


def test_hash_and_hint_do_not_reveal_the_token() -> None:
    t = tokens.generate()
    assert len(tokens.token_hash(t)) == 32
    assert tokens.hint(t) == "shk_…" + t[-4:]
    assert t[4:-4] not in tokens.hint(t)
