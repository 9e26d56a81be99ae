"""The judge's pure parts (rlsys/rewards/judge.py): score parsing, aggregation, template checks
and the judge's prompt."""
from __future__ import annotations

import pytest

from rlsys.protocol import MediaItem, Prompt
from rlsys.rewards.judge import (
    DEFAULT_TEMPLATE,
    aggregate,
    check_template,
    JUDGE_SYSTEM_PROMPT,
    judge_prompt,
    judge_seed_key,
    load_template,
    parse_score,
)


@pytest.mark.parametrize("text, score", [
    ("Correct count. <score>8</score>", 8.0),
    ("<score> 7.5 </score>", 7.5),
    ("<score>8/10</score>", 8.0),
    ("<score>8 / 10</score>", 8.0),
    ("<SCORE>3</SCORE>", 3.0),
    ("<score>-1</score>", -1.0),
    ("<score>.5</score>", 0.5),
    ("first <score>2</score> then, on reflection, <score>9</score>", 9.0),  # the last tag
    ("<score>abc</score> later <score>4</score>", 4.0),
])
def test_parse_score_reads_the_last_tag(text, score):
    assert parse_score(text) == (score, "")


@pytest.mark.parametrize("text, reason", [
    ("The answer looks right, 8 out of 10.", "no <score> tag"),
    ("", "no <score> tag"),
    ("<score></score>", "empty <score></score> tag"),
    ("<score>   </score>", "empty <score></score> tag"),
    ("<score>abc</score>", "score 'abc' is not a number"),
    ("<score>nan</score>", "score 'nan' is not finite"),
    ("<score>inf</score>", "score 'inf' is not finite"),
    ("<score>7 8</score>", "score '7 8' holds several numbers"),
    ("<score>7-8</score>", "score '7-8' holds several numbers"),
    ("<score>about 7</score>", "score 'about 7' is not a number"),
    ("<score>4/5</score>", "score '4/5' is not out of 10"),
    ("<score>1e1</score>", "score '1e1' is not a plain number"),
    ("critique <score>8", "unclosed <score> tag (output cut off?)"),
    ("<score>6</score> no wait <score>", "unclosed <score> tag (output cut off?)"),
])
def test_parse_score_failures_name_the_reason(text, reason):
    assert parse_score(text) == (None, reason)


def test_parse_score_never_raises_and_reasons_are_one_line():
    long_word = "x" * 500
    for text in (None, 12, "<score>\n\nbad\nscore\n</score>", f"<score>{long_word}</score>", "<<score>>"):
        score, why = parse_score(text)  # type: ignore[arg-type]
        assert score is None and why and "\n" not in why and len(why) < 100, (text, why)


def test_aggregate_means_parsable_scores_and_falls_back():
    assert aggregate(["<score>8</score>", "garbled", "<score>6</score>"], fallback=-1.0) == (7.0, False, None)
    assert aggregate(["garbled", "<score>x</score>"], fallback=-1.0) == (-1.0, True, "no <score> tag")
    assert aggregate([], fallback=0.5) == (0.5, True, "no judgements")


def test_default_template_passes_its_own_check(tmp_path):
    assert load_template(None) == DEFAULT_TEMPLATE
    assert check_template(None) is None
    assert len(DEFAULT_TEMPLATE.split()) < 60  # the tiny judge's context is small
    good = tmp_path / "t.txt"
    good.write_text("Q: {question}\nA: {response}\nRef: {answer}\nUse {{braces}} literally.")
    assert check_template(str(good)) is None
    assert load_template(str(good)) == good.read_text()


@pytest.mark.parametrize("text, problem", [
    ("A: {response}", "missing {question}"),
    ("nothing here", "missing {question} and {response}"),
    ("{question} {response} {foo}",
     "unknown placeholder {foo} (allowed: {question}, {response}, {answer}; write a literal brace as {{ or }})"),
    ("{question} {response} {}", "unknown placeholder {} (allowed: {question}, {response}, {answer}; "
                                 "write a literal brace as {{ or }})"),
    ("{question} {response} {question.upper}", "unknown placeholder {question.upper} (allowed: {question}, "
                                               "{response}, {answer}; write a literal brace as {{ or }})"),
    ("{question} {response:>20}", "placeholder {response} has a conversion or format spec; write plain {response}"),
    ("{question} {response} }", "bad braces (Single '}' encountered in format string); write a literal brace "
                                "as {{ or }}"),
    ("{question} {response", "bad braces (expected '}' before end of string); write a literal brace as {{ or }}"),
])
def test_check_template_names_each_problem(text, problem):
    assert check_template(text=text) == problem


def test_check_template_on_files(tmp_path):
    missing = tmp_path / "nope.txt"
    why = check_template(str(missing))
    assert why.startswith("cannot read template file: FileNotFoundError:") and "\n" not in why
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert check_template(str(empty)) == "template file is empty"
    bad = tmp_path / "bad.txt"
    bad.write_text("{question}")
    assert check_template(str(bad)) == "missing {response}"
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe{question}")
    assert check_template(str(binary)).startswith("cannot read template file: UnicodeDecodeError:")


def _media(tag: str) -> MediaItem:
    return MediaItem(tag * 64, b"png-" + tag.encode(), 56, 56)


SYSTEM = {"role": "system", "content": JUDGE_SYSTEM_PROMPT}


def test_judge_prompt_puts_images_first_and_replaces_the_system_turn():
    a, b = _media("a"), _media("b")
    prompt = Prompt("train:3", [
        {"role": "system", "content": "Think in <think> tags."},
        {"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "image"},
                                     {"type": "text", "text": " and "}, {"type": "image"}]},
    ], images=[a, b], answer="2", metadata={"family": "count_color"})
    jp = judge_prompt("Q={question}|R={response}|A={answer}", prompt, "<answer>2</answer>", index=1)
    assert jp.uid == "train:3#judge1"
    assert jp.messages == [SYSTEM, {"role": "user", "content": [
        {"type": "image"}, {"type": "image"},
        {"type": "text", "text": "Q=Compare  and|R=<answer>2</answer>|A=2"}]}]
    assert jp.images == [a, b] and jp.images[0] is a and jp.images[1] is b
    assert jp.answer == "2" and jp.metadata == {"family": "count_color"} and jp.response is None
    assert prompt.messages[0]["role"] == "system"  # the policy prompt is left as it was


def test_judge_prompt_text_only_and_without_answer():
    prompt = Prompt("t:0", [{"role": "user", "content": "What is 3 plus 4?"}])
    jp = judge_prompt("{question} -> {response} ({answer})", prompt, "7 {not a field}")
    assert jp.uid == "t:0#judge" and jp.images == []
    assert jp.messages == [SYSTEM, {"role": "user", "content": "What is 3 plus 4? -> 7 {not a field} ()"}]
    with_images = Prompt("t:1", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}],
                         images=[_media("c")])
    blind = judge_prompt("{question}|{response}", with_images, "2", images=False)
    assert blind.images == [] and blind.messages == [SYSTEM, {"role": "user", "content": "How many?|2"}]


def test_judge_seed_key_depends_on_prompt_and_response_only():
    assert judge_seed_key("u:1", "abc") == judge_seed_key("u:1", "abc")
    assert len({judge_seed_key("u:1", "abc"), judge_seed_key("u:2", "abc"), judge_seed_key("u:1", "abd")}) == 3
