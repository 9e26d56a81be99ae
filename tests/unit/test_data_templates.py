"""rlsys.data.templates: R1 system prompt and chat-message layout."""
from rlsys.data.templates import (
    R1_SYSTEM_PROMPT,
    build_messages,
    format_response,
    prompt_text,
    text_to_parts,
    with_system_prompt,
)


def test_r1_system_prompt_names_both_tags():
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag in R1_SYSTEM_PROMPT


def test_build_messages_puts_images_before_question():
    msgs = build_messages("How many?", num_images=2)
    assert msgs[0] == {"role": "system", "content": R1_SYSTEM_PROMPT}
    assert msgs[1]["role"] == "user"
    assert msgs[1]["content"] == [{"type": "image"}, {"type": "image"},
                                  {"type": "text", "text": "How many?"}]
    assert build_messages("q", 0, system_prompt=None) == [
        {"role": "user", "content": [{"type": "text", "text": "q"}]}]


def test_inline_image_markers_place_images():
    assert text_to_parts("Look <image> then <image> answer", 2) == [
        {"type": "text", "text": "Look"}, {"type": "image"}, {"type": "text", "text": "then"},
        {"type": "image"}, {"type": "text", "text": "answer"}]


def test_format_and_text_helpers():
    assert format_response("2 red.", 2) == "<think>2 red.</think><answer>2</answer>"
    msgs = build_messages("Q?", 1, system_prompt="SYS")
    assert prompt_text(msgs) == "SYS\nQ?"
    assert prompt_text(msgs, include_system=False) == "Q?"
    assert with_system_prompt(msgs, "OTHER") is msgs  # a row's own system prompt wins
    user_only = msgs[1:]
    assert with_system_prompt(user_only, "S")[0] == {"role": "system", "content": "S"}
