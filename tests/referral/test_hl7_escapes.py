r"""HL7 v2 escape sequences and separators (HL7 v2.5 chapter 2.5 and 2.7), as the referral parser reads them.

The separators come from the message itself: MSH-1 is the field separator, MSH-2 the component,
repetition, escape and subcomponent characters (and in v2.7 the truncation character). An escape
sequence is read left to right between two escape characters: ``\F\ \S\ \T\ \R\ \E\`` are the
message's separators, ``\Xhh..\`` hexadecimal data, ``\.br\`` and the other formatting commands text
layout, ``\H\ \N\`` highlighting, ``\C..\ \M..\`` character sets and ``\Z..\`` local escapes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hl7apy.parser import parse_message
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.referral.errors import HL7ParseError
from gateway.referral.hl7 import Separators, build_ack, parse_hl7_referral, unescape

SOURCES = {"STMARYS": "st-marys"}
FIXTURES = Path(__file__).parent / "fixtures"
ORM = (FIXTURES / "orm_o01.hl7").read_bytes().decode()
OMI = (FIXTURES / "omi_o23.hl7").read_bytes().decode()
EXAMINATION = "Reduced ankle reflex on the left, EHL power 4/5."
DEFAULT = Separators()
# None of these characters occurs in the fixtures, so a fixture can be rewritten in them one for one.
ALL_CUSTOM = Separators(field="#", component="*", repetition="%", escape="!", subcomponent="$")


def with_separators(message: str, separators: Separators) -> str:
    """The message written with other separators (the fixtures hold no escape sequence)."""
    table = str.maketrans({DEFAULT.field: separators.field, DEFAULT.component: separators.component,
                           DEFAULT.repetition: separators.repetition, DEFAULT.escape: separators.escape,
                           DEFAULT.subcomponent: separators.subcomponent})
    return message.translate(table)


def with_examination(message: str, text: str) -> str:
    """The message with the examination (OBX EXAM) text replaced, written as given."""
    assert EXAMINATION in message
    return message.replace(EXAMINATION, text)


def spec_escape(text: str, separators: Separators) -> str:
    """The escaping rule of chapter 2.7.1, one character at a time."""
    e = separators.escape
    names = {separators.field: "F", separators.component: "S", separators.subcomponent: "T",
             separators.repetition: "R", separators.escape: "E"}
    return "".join(f"{e}{names[c]}{e}" if c in names else c for c in text)


# --- each escape sequence -------------------------------------------------------------------------------

@pytest.mark.parametrize(("written", "plain"), [
    (r"a\F\b", "a|b"),
    (r"a\S\b", "a^b"),
    (r"a\T\b", "a&b"),
    (r"a\R\b", "a~b"),
    (r"a\E\b", "a\\b"),
    (r"\F\\S\\T\\R\\E\ ", "|^&~\\ "),
    (r"a\H\bold\N\c", "aboldc"),
    ("\\X41\\", "A"),
    ("caf\\XC3A9\\", "café"),            # UTF-8 bytes
    ("caf\\XE9\\", "café"),              # not UTF-8: Latin-1
    (r"line\X0D0A\next", "line\nnext"),
    (r"a\.br\b", "a\nb"),
    (r"a\.sp\b", "a\n\nb"),              # end the line, skip one
    (r"a\.sp 2\b", "a\n\n\nb"),
    (r"a\.ce\b", "a\nb"),
    (r"a\.sk 3\b", "a   b"),
    (r"a\.in 4\b\.ti -2\\.fi\\.nf\c", "abc"),
    (r"a\Zlocal\b", "ab"),
    (r"a\C2842\b\M2442\c", "abc"),
])
def test_each_escape_sequence(written, plain):
    assert unescape(written) == plain


def test_the_escaped_escape_is_read_left_to_right():
    # \E\ is one backslash; the "F\b" after it is text and an escape sequence that is never closed.
    assert unescape(r"a\E\F\b") == r"a\F\b"
    # the text a\F\b written by the rules
    assert unescape(r"a\E\F\E\b") == r"a\F\b"
    assert unescape(r"\E\\F\\E\ ") == "\\|\\ "


@pytest.mark.parametrize("written", [
    "abc\\", r"abc\F", r"a\b", "\\X4\\", "\\XZZ\\", "\\X\\", r"a\Q\b", r"\P\ without a truncation character",
    r"C:\dir\file",
])
def test_a_truncated_or_unknown_escape_stays_as_written(written):
    assert unescape(written) == written


def test_truncation_character_of_v2_7():
    assert unescape(r"a\P\b", Separators(truncation="#")) == "a#b"


@pytest.mark.parametrize("separators", [
    Separators(field="#"),
    Separators(component="*"),
    Separators(escape="!"),
    ALL_CUSTOM,
])
def test_escapes_name_the_message_s_own_separators(separators):
    e = separators.escape
    written = f"x{e}F{e}{e}S{e}{e}T{e}{e}R{e}{e}E{e}y"
    assert unescape(written, separators) == (f"x{separators.field}{separators.component}"
                                             f"{separators.subcomponent}{separators.repetition}{e}y")
    assert unescape(r"a\F\b", separators) == (r"a\F\b" if e != "\\" else f"a{separators.field}b")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab |^~\\&#*%!$\n", max_size=60),
       separators=st.sampled_from([DEFAULT, ALL_CUSTOM, Separators(component="*")]))
def test_escaping_by_the_rules_then_unescaping_gives_the_text_back(text, separators):
    assert unescape(spec_escape(text, separators), separators) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_unescapes_without_error(text):
    assert isinstance(unescape(text), str)


# --- separators from MSH-1 and MSH-2, in whole messages ----------------------------------------------------

@pytest.mark.parametrize("separators", [
    Separators(field="#"),            # MSH#^~\&
    Separators(component="*"),        # MSH|*~\&
    Separators(repetition="%"),
    Separators(escape="!"),
    Separators(subcomponent="$"),
    ALL_CUSTOM,                       # MSH#*%!$
], ids=lambda s: "MSH" + s.field + s.component + s.repetition + s.escape + s.subcomponent)
@pytest.mark.parametrize("fixture", [ORM, OMI], ids=["ORM^O01", "OMI^O23"])
def test_a_message_in_other_separators_reads_the_same(fixture, separators):
    rewritten = with_separators(fixture, separators)
    assert rewritten.startswith("MSH" + separators.field + separators.component + separators.repetition
                                + separators.escape + separators.subcomponent + separators.field)
    assert parse_hl7_referral(rewritten, SOURCES) == parse_hl7_referral(fixture, SOURCES)


def test_escapes_in_a_message_with_custom_separators():
    written = with_examination(with_separators(ORM, ALL_CUSTOM),
                               "power 4!S!5 !F! a^b|c !E!T!E! reflex!.br!left")
    referral = parse_hl7_referral(written, SOURCES)
    # !S! is the message's component separator "*", and ^ and | are plain text in this message
    assert referral.clinical.examination == "power 4*5 # a^b|c !T! reflex\nleft"


def test_the_default_separators_are_not_assumed():
    # Under MSH|*~\&, "^" is text: the name is one component, the facility's "*" splits.
    message = with_separators(ORM, Separators(component="*")).replace("Doe*Jane", "Doe^Jane*Ann", 1)
    assert parse_hl7_referral(message, SOURCES).patient.name == "Doe^Jane^Ann"


def test_escapes_in_a_whole_message_are_resolved():
    written = with_examination(ORM, r"EHL 4\S\5, ankle \T\ knee\.br\a\E\F\b \X41\\H\!\N\ C:\dir")
    assert parse_hl7_referral(written, SOURCES).clinical.examination == "EHL 4^5, ankle & knee\na\\F\\b A! C:\\dir"


def test_subcomponents_are_split_before_unescaping():
    # PID-3 CX.1 "MRN\T\1" is one value holding "&"; the real "&" after it starts CX.1's second subcomponent
    message = ORM.replace("|MRN0012345^^^STM^MR|", r"|MRN\T\1&X^^^STM^MR|", 1)
    assert parse_hl7_referral(message, SOURCES).patient.id == "MRN&1"


def test_text_keeps_an_unescaped_ampersand():
    message = ORM.replace("Low back pain radiating", "Low back pain & numbness radiating", 1)
    assert parse_hl7_referral(message, SOURCES).clinical.history.startswith("Low back pain & numbness radiating")


def test_truncated_escape_in_a_message_is_kept():
    written = with_examination(ORM, "power 4\\5")
    assert parse_hl7_referral(written, SOURCES).clinical.examination == "power 4\\5"


@pytest.mark.parametrize("msh", ["MSH||~\\&|", "MSH|^^\\&|", "MSH|^~\\", "MSH^^~\\&^"])
def test_unusable_encoding_characters_are_refused(msh):
    message = msh + ORM.split("|", 2)[2] if msh.endswith("|") else msh + "|RIS|STMARYS"
    with pytest.raises(HL7ParseError):
        parse_hl7_referral(message, SOURCES)


def test_v2_7_truncation_character_is_read_from_msh_2():
    message = ORM.replace("MSH|^~\\&|", "MSH|^~\\&#|", 1).replace("|P|2.5|", "|P|2.7|", 1)
    written = with_examination(message, r"cut\P\here")
    assert parse_hl7_referral(written, SOURCES).clinical.examination == "cut#here"


# --- the acknowledgement is in the default separators, whatever the order used ---------------------------

def test_ack_of_a_message_in_custom_separators():
    ack = build_ack(with_separators(ORM, ALL_CUSTOM), accept=False, error_text="a|b")
    lines = ack.split("\r")
    assert lines[0].startswith("MSH|^~\\&|SPINEGW|SPINEGW|RIS|STMARYS^2.16.840.1.113883.19.4.1^ISO|")
    assert "|ACK^O01^ACK|" in lines[0]
    assert lines[1] == "MSA|AE|MSG00001|a\\F\\b"
    assert parse_message(ack, find_groups=False).msa.msa_2.to_er7() == "MSG00001"


def test_ack_reason_is_cut_before_it_is_escaped():
    ack = build_ack(ORM, accept=False, error_text="x" * 79 + "|tail")
    msa = next(line for line in ack.split("\r") if line.startswith("MSA|"))
    assert msa.split("|")[3] == "x" * 79 + "\\F\\"


# --- why field values are not read through hl7apy's element tree (hl7apy 1.3.5) ---------------------------
# If an hl7apy upgrade changes either behaviour, these fail: then reading values through hl7apy is worth
# another look (gateway/referral/hl7.py, module docstring).

def test_hl7apy_escapes_an_escape_sequence_it_does_not_know_again():
    written = with_examination(ORM, r"a\X41\b\.br\c")
    message = parse_message(written, find_groups=False)
    obx = [segment for segment in message.children if segment.name == "OBX"][-1]  # the examination
    assert obx.obx_5.to_er7() == r"a\E\X41\E\b\E\.br\E\c"
    assert parse_hl7_referral(written, SOURCES).clinical.examination == "aAb\nc"


def test_hl7apy_drops_the_leading_zero_of_a_numeric_component():
    written = ORM.replace("^PRN^PH^^44^20^79460123", "^PRN^PH^^44^020^079460123", 1)
    pid = next(segment for segment in parse_message(written, find_groups=False).children if segment.name == "PID")
    assert pid.pid_13.to_er7() == "^PRN^PH^^44^20^79460123"
    assert parse_hl7_referral(written, SOURCES).patient.phones == ["+44 020 079460123"]
