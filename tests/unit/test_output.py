from slmd.output import TextState, feed, flush


def run(pieces, stop=()):
    st = TextState(tuple(stop))
    out = "".join(feed(st, p) for p in pieces)
    return out + flush(st), st.stopped


def test_multibyte_split_across_tokens():
    euro = "€".encode()
    assert run([b"a", euro[:1], euro[1:2], euro[2:], b"b"]) == ("a€b", False)
    st = TextState(())
    assert feed(st, euro[:2]) == ""  # nothing half-decoded is delivered


def test_incomplete_utf8_at_end_becomes_replacement():
    assert run([b"x", "€".encode()[:2]]) == ("x\ufffd", False)


def test_stop_string_across_tokens_is_cut():
    assert run([b"Hello", b" wor", b"ld", b"!!"], stop=["world"]) == ("Hello ", True)


def test_held_back_text_released_when_not_a_stop():
    st = TextState(("STOP",))
    got = [feed(st, p) for p in (b"abc", b"ST", b"x", b"yz")]
    assert "".join(got) + flush(st) == "abcSTxyz" and not st.stopped
    assert got[1] == ""  or not got[1].endswith("ST")


def test_earliest_of_several_stops():
    assert run([b"one two three"], stop=["three", "two"]) == ("one ", True)
