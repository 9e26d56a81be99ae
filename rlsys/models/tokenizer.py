"""A small byte-level BPE tokenizer for the tiny model, trained offline from a fixed corpus.

Nothing here touches a model hub: the corpus is generated from word lists in a fixed order, so
two builds produce byte-identical `tokenizer.json` files. The special tokens and the chat
template follow Qwen2.5-VL, so the prompt rendering, image placeholders and stop tokens behave
the same on the tiny model as on a real Qwen2.5-VL checkpoint.
"""
from __future__ import annotations

import itertools
from typing import Iterator

# Special tokens (skipped when decoding with skip_special_tokens=True), in id order 0..6.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Reasoning tags are *non-special* added tokens: they stay in decoded response text (format
# rewards look for them) but are never split by BPE.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen-style chat template. An image part ({"type": "image"}) becomes one vision block; the
# processor later expands the single <|image_pad|> to as many pads as the image has tokens.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

_COLOURS = "red green blue yellow orange purple black white gray grey pink brown cyan magenta".split()
_SHAPES = ("circle circles square squares triangle triangles star stars rectangle rectangles "
           "hexagon hexagons diamond diamonds dot dots line lines cross crosses shape shapes").split()
_WORDS = (
    "the a an of in on at to is are was how many what which where who there this that these "
    "those and or not no yes image picture grid cell row column left right top bottom above "
    "below next between inside outside count number total sum difference largest smallest "
    "biggest most least more less than equal same different colour color size big small large "
    "tiny first second third last answer question think step let me look see find compare "
    "because so then therefore final put your within tags please reason carefully output only "
    "one two three four five six seven eight nine ten zero each every all none some object "
    "objects position nearest farthest visible hidden plus minus times divided by mod even odd "
    "You are a helpful assistant user system assistant reasoning correct wrong result value "
    "with for from as it be can should will have has do does if else true false"
).split()
_MARKUP = [
    "<think>", "</think>", "<answer>", "</answer>", "\n", "\n\n", ": ", ", ", ". ", "? ", "(", ")",
    "[", "]", "{", "}", "=", "+", "-", "*", "/", "'", '"', "#", "`", "```", "    ", "\t",
]


def training_corpus() -> Iterator[str]:
    """Deterministic training text: task sentences, numbers and chat markup, in a fixed order."""
    yield from _WORDS
    yield from _MARKUP
    for i in range(0, 1000):
        yield f"{i} "
    for colour, shape in itertools.product(_COLOURS, _SHAPES):
        yield f"How many {colour} {shape} are in the image? "
        yield f"The {colour} {shape} is left of the {shape}."
    for a, b in itertools.product(range(13), range(13)):
        yield f"What is {a} plus {b}? {a} + {b} = {a + b}. The answer is {a + b}."
    # Shapes of the responses the policy is rewarded for, so the tags and numbers are common.
    for n, colour in itertools.product(range(20), _COLOURS):
        yield (f"<think>Let me count the {colour} objects step by step. I see {n}.</think>"
               f"<answer>{n}</answer>")
    for w1, w2 in zip(_WORDS, _WORDS[7:] + _WORDS[:7]):
        yield f"{w1.capitalize()} {w2}, {w2} {w1}. {w1}? {w2}!"
    yield "You are a helpful assistant. Think step by step and put the final answer in tags."


def train_tokenizer(vocab_size: int = 1024):
    """Train the byte-level BPE `tokenizers.Tokenizer` (vocab_size counts the special tokens).

    Digits are split individually (as Qwen does) so numbers tokenize uniformly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    tok.add_tokens(list(TAG_TOKENS))
    return tok


def build_hf_tokenizer(vocab_size: int = 1024, model_max_length: int = 4096):
    """Wrap the trained tokenizer for transformers: pad = <|endoftext|>, eos = <|im_end|>."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(vocab_size),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    return hf


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids the model config must agree with, looked up by name (never hard-coded)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + TAG_TOKENS}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks tokens {missing}")
    return ids
